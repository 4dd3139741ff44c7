"""Fixtures of the RL tests: a character-level sentencepiece tokenizer over the verifiable tasks' alphabet
(with its Hugging Face files) and tiny policies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmhpc.exchange.tokenizer import SentencePieceTokenizer
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from lmhpc.rl.tasks import generate

torch.set_num_threads(1)  # tiny models on shared cores


def tiny_policy(vocab_size: int, seed: int = 0, **kw) -> Transformer:
    """A random 2-layer policy over ``vocab_size`` tokens."""
    torch.manual_seed(seed)
    args = ModelArgs(**{"vocab_size": vocab_size, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                        "max_seq_len": 64, **kw})
    return Transformer(args)


def make_char_tokenizer(folder: Path) -> Path:
    """A sentencepiece BPE model, digits split, (unk 0, eos 1, bos 2, pad 3) of the tasks' characters, and its
    ``tokenizer.json``; returns the folder."""
    import sentencepiece as spm

    from lmhpc.tokenizer.hf_export import write_hf_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    lines = [r["prompt"] + r["answer"] for r in generate(["arithmetic", "sorting", "formatting"], 600, seed=5)]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=36, model_type="bpe", character_coverage=1.0, split_digits=True,
                                   unk_id=0, eos_id=1, bos_id=2, pad_id=3, hard_vocab_limit=False,
                                   num_threads=1, minloglevel=2)
    (folder / "corpus.txt").unlink()
    write_hf_tokenizer(folder / "tokenizer.model", folder)
    return folder


@pytest.fixture(scope="session")
def char_tokenizer_dir(tmp_path_factory) -> Path:
    return make_char_tokenizer(tmp_path_factory.mktemp("rl-tokenizer"))


@pytest.fixture(scope="session")
def char_tokenizer(char_tokenizer_dir) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(char_tokenizer_dir / "tokenizer.model")


def write_policy(folder: Path, tokenizer_dir: Path, seed: int = 0, **kw) -> Path:
    """A random tiny policy as a consolidated folder (what ``init_from`` opens), with its tokenizer."""
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    model = tiny_policy(36, seed=seed, **kw)
    return write_consolidated(ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer_dir)),
                              folder)


@pytest.fixture(scope="session")
def policy_source(tmp_path_factory, char_tokenizer_dir) -> Path:
    return write_policy(tmp_path_factory.mktemp("rl-policy") / "model", char_tokenizer_dir)
