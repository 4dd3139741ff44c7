"""Where and how stages run: local subprocesses, SLURM through submitit, preemption plumbing."""
