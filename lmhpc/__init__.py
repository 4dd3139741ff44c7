"""lmhpc: SLURM batch jobs that build a language model end to end."""

__version__ = "0.1.0"
