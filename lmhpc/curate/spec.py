"""The curate stage's registration."""

from lmhpc.curate.config import CurateConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("curate", "lmhpc.curate.stage", "array", config=CurateConfig, order=10,
              preflight="lmhpc.curate.preflight:preflight"),
]
