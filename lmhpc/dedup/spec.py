"""The dedup stage's registration: it reads the curate stage's shards, or raw inputs (``dedup.inputs``)."""

from lmhpc.dedup.config import DedupConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("dedup", "lmhpc.dedup.stage", "mpi", config=DedupConfig, reads=("curate",), order=20,
              preflight="lmhpc.dedup.preflight:preflight"),
]
