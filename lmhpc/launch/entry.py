"""The first Python of every SLURM job lmhpc submits: ``python -u -m lmhpc.launch.entry <folder>``.

It installs the preemption flag before anything else is imported, then hands over to submitit's job
runner (``submitit.core._submit``), which loads the pickled :class:`~lmhpc.launch.slurm.StageJob`. A
SIGUSR2/SIGTERM that arrives while the job is still importing is kept, not fatal: the stage sees it at
its first boundary and saves and requeues (or, with nothing left to do, finishes).
"""

from lmhpc.launch.preempt import early_flag

early_flag().install()

if __name__ == "__main__":
    from submitit.core.submission import submitit_main

    submitit_main()
