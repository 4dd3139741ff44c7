"""The pretrain stage's registration (torch-native backend; Megatron-Core with ``backend: megatron``)."""

from lmhpc.stages import StageSpec
from lmhpc.train.config import PretrainConfig

SPECS = [
    StageSpec("pretrain", "lmhpc.train.stage", "torch", config=PretrainConfig, reads=("tokenize", "tokenizer"),
              order=50, preflight="lmhpc.train.preflight:preflight"),
]
