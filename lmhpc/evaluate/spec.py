"""The evaluate stage's registration: it reads the pretrain and tokenizer stages, or the models it names."""

from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("evaluate", "lmhpc.evaluate.stage", "single", config=EvaluateConfig, reads=("pretrain", "tokenizer"),
              order=70),
]
