"""The medusa stage's registration: it reads the model stage it starts from and the tokenize stage's shards."""

from lmhpc.medusa.config import MedusaConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("medusa", "lmhpc.medusa.stage", "single", config=MedusaConfig, reads=("pretrain", "tokenize"),
              order=85),
]
