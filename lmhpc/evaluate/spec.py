"""The evaluate stage's registration: it reads the model stages the run chains (pretrain and the language models
of alignment: sft, dpo, ppo, grpo) and the tokenizer, or the models it names."""

from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("evaluate", "lmhpc.evaluate.stage", "single", config=EvaluateConfig,
              reads=("pretrain", "sft", "dpo", "ppo", "grpo", "tokenizer"), order=70),
]
