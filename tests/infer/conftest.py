"""Fixtures of the generation tests: a sentencepiece tokenizer with ChatML tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmhpc.exchange.tokenizer import SentencePieceTokenizer
from tests.infer.models import VOCAB
from tests.train.fixtures import sample_texts

torch.set_num_threads(1)  # tiny models on shared cores: see tests/train/conftest.py


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory) -> SentencePieceTokenizer:
    """A 96-piece sentencepiece BPE model with unk 0, eos 1, bos 2, pad 3 and the ChatML tokens."""
    import sentencepiece as spm

    folder: Path = tmp_path_factory.mktemp("infer-tokenizer")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(sample_texts(200, seed=1)) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=VOCAB,
                                   model_type="bpe", character_coverage=1.0, unk_id=0, eos_id=1, bos_id=2,
                                   pad_id=3, user_defined_symbols=["<|im_start|>", "<|im_end|>"], num_threads=1,
                                   minloglevel=2)
    return SentencePieceTokenizer(folder / "tokenizer.model")
