"""After a job's step: requeue the job when one of its processes was killed from outside the stage; before
an MPI job's step: remove the shared memory that killed MPI ranks left behind.

    python -m lmhpc.launch.crash STAGE STAGE_DIR MAX_REQUEUES EXIT_CODE
    python -m lmhpc.launch.crash --stage-args EXIT_CODE STAGE CONFIG [overrides] [--task I ...]   (slurm/common.sh)
    python -m lmhpc.launch.crash --mpi-shm

Every SLURM job lmhpc submits runs this after ``srun`` (``srun --kill-on-bad-exit=1`` ends the other ranks
as soon as one dies, instead of leaving them blocked in a collective until the time limit). A step that ends
by a signal (exit code 128 + N: ``kill -9`` of a rank, the kernel's OOM killer, a segfault) while the stage
recorded no failure of its own for this job and attempt is a crash: the job is requeued, and the stage resumes
from what it saved (finished units, its last checkpoint), at most ``resources.<stage>.max_requeues`` times in
all. A stage that failed on its own (bad input, a changed config) is not retried. Exit status: 0 when the job
was requeued, 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path

from lmhpc.launch.preempt import REQUEUE_EXIT_CODE, requeue_or_exit, restart_count
from lmhpc.timing import read_events

log = logging.getLogger("lmhpc.crash")


def stage_failed_itself(stage_dir: Path, job: str | None, attempt: int) -> bool:
    """Whether a process of this job's attempt recorded the stage's own failure (an ``end`` event, code 1)."""
    return any(e["event"] == "end" and e.get("code") == 1 and str(e.get("job")) == str(job)
               and int(e.get("attempt") or 0) == attempt for e in read_events(stage_dir))


def after_step(stage: str, stage_dir: Path, max_requeues: int, code: int) -> bool:
    """True when the job was requeued after a crash."""
    if code < 128:
        return False
    job, attempt = os.environ.get("SLURM_JOB_ID"), restart_count()
    if stage_failed_itself(stage_dir, job, attempt):
        log.error("stage %s failed (see above); not requeued", stage)
        return False
    log.warning("stage %s: a process of SLURM job %s was killed (step exit code %d, signal %d) without the "
                "stage saving; requeueing it to resume from its last saved state", stage, job, code, code - 128)
    return requeue_or_exit(stage, f"step killed by signal {code - 128}", max_requeues) == REQUEUE_EXIT_CODE


MPI_SHM = re.compile(r"^mpich_(shm|vci)_[0-9a-f]+_\d+$")


def orphan_mpi_shm(shm_dir: Path = Path("/dev/shm"), min_age_s: float = 2.0) -> list[Path]:
    """This user's MPICH shared-memory segments that no process maps and that are older than ``min_age_s``.

    MPICH names a node's segment after the job step (``mpich_shm_<hash of the PMI name>_<node>``) and a rank
    killed by a signal never unlinks it. A requeued job keeps its id and its step ids, so its ranks would
    attach to the dead attempt's segment and fail in ``MPI_Init`` (seen as "Message truncated" or "failed to
    unpack address"). A segment some live process still maps, or one just created, is never touched."""
    uid = os.getuid()
    candidates = {}
    now = time.time()
    for path in shm_dir.glob("mpich_*") if shm_dir.is_dir() else []:
        try:
            st = path.stat()
        except OSError:
            continue
        if MPI_SHM.match(path.name) and st.st_uid == uid and now - st.st_mtime >= min_age_s:
            candidates[str(path)] = path
    if not candidates:
        return []
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue  # gone, or another user's process (which cannot map this user's 0600 segments)
        for name in [n for n in candidates if n in text]:
            del candidates[name]
    return sorted(candidates.values())


def remove_orphan_mpi_shm() -> int:
    removed = 0
    for path in orphan_mpi_shm():
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d MPI shared-memory segment(s) left by killed ranks", removed)
    return removed


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    args = argv if argv is not None else sys.argv[1:]
    if args == ["--mpi-shm"]:
        remove_orphan_mpi_shm()
        return 0
    if args[:1] == ["--stage-args"]:  # the arguments of `lmhpc stage`, as slurm/common.sh has them
        from lmhpc.cli import build_parser
        from lmhpc.config import load_config

        code, stage_args = int(args[1]), build_parser().parse_args(["stage", *args[2:]])
        cfg = load_config(stage_args.config, stage_args.overrides)
        requeued = after_step(stage_args.name, cfg.run_dir / stage_args.name,
                              cfg.resources_for(stage_args.name).max_requeues, code)
        return 0 if requeued else 1
    stage, stage_dir, max_requeues, code = args
    return 0 if after_step(stage, Path(stage_dir), int(max_requeues), int(code)) else 1


if __name__ == "__main__":
    sys.exit(main())
