"""The quantize stage's registration: it reads the model stage it starts from (the latest of pretrain and the
alignment stages that the run chains), the tokenizer, and the tokenize stage's shards for GPTQ's calibration."""

from lmhpc.quantize.config import QuantizeConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("quantize", "lmhpc.quantize.stage", "single", config=QuantizeConfig,
              reads=("pretrain", "sft", "dpo", "ppo", "grpo", "tokenize", "tokenizer"), order=80,
              preflight="lmhpc.quantize.preflight:preflight"),
]
