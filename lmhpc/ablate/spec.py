"""The ablate stage's registration: one array unit per data variant, the comparison in finalize."""

from lmhpc.ablate.config import AblateConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("ablate", "lmhpc.ablate.stage", "array", config=AblateConfig, reads=("tokenizer",), order=90,
              preflight="lmhpc.ablate.preflight:preflight"),
]
