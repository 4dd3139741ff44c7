"""The pretrain stage's registration (torch-native backend)."""

from lmhpc.stages import StageSpec
from lmhpc.train.config import PretrainConfig

SPECS = [
    StageSpec("pretrain", "lmhpc.train.stage", "torch", config=PretrainConfig, reads=("tokenize", "tokenizer"),
              order=50),
]
