"""The tokenizer (train a sentencepiece model) and tokenize (encode to ``.bin/.idx``) stages' registration."""

from lmhpc.stages import StageSpec
from lmhpc.tokenizer.config import TokenizeConfig, TokenizerConfig

SPECS = [
    StageSpec("tokenizer", "lmhpc.tokenizer.train_stage", "single", config=TokenizerConfig, reads=("dedup",),
              order=30),
    StageSpec("tokenize", "lmhpc.tokenizer.tokenize_stage", "array", config=TokenizeConfig,
              reads=("dedup", "tokenizer"), order=40),
]
