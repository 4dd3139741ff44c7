"""Fixtures of the preference tests: a sentencepiece tokenizer with ChatML tokens (and its Hugging Face files),
a tiny model over it, and the shipped preference pairs tokenized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmhpc.data.quarantine import Quarantine
from lmhpc.exchange.tokenizer import SentencePieceTokenizer
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from lmhpc.preference.data import PreferenceData, load_pairs
from tests.train.fixtures import sample_texts

torch.set_num_threads(1)  # tiny models on shared cores

ROOT = Path(__file__).resolve().parents[2]
PAIRS = ROOT / "data" / "align" / "preference" / "pairs.jsonl"


def pair_texts() -> list[str]:
    texts = []
    for line in PAIRS.read_text().splitlines():
        r = json.loads(line)
        prompt = r["prompt"] if isinstance(r["prompt"], str) else " ".join(m["content"] for m in r["prompt"])
        texts += [prompt, r["chosen"], r["rejected"]]
    return texts


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tokenizer folder as the tokenizer stage leaves it: ``tokenizer.model`` (BPE, byte fallback, ChatML
    user tokens, 400 pieces) and its Hugging Face files."""
    import sentencepiece as spm

    from lmhpc.tokenizer.config import TokenizerConfig
    from lmhpc.tokenizer.hf_export import write_hf_tokenizer
    from lmhpc.tokenizer.training import trainer_options

    folder = tmp_path_factory.mktemp("pref-tokenizer")
    cfg = TokenizerConfig(vocab_size=400, character_coverage=1.0, user_tokens=["<|im_start|>", "<|im_end|>"])
    corpus = pair_texts() + sample_texts(100, seed=5)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(folder / "tokenizer"),
                                   **trainer_options(cfg, cfg.vocab_size, num_threads=1))
    write_hf_tokenizer(folder / "tokenizer.model", folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(tokenizer_dir / "tokenizer.model")


def tiny_args(vocab: int, **kw) -> ModelArgs:
    base = {"vocab_size": -(-vocab // 32) * 32, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
            "max_seq_len": 128, "init_std": 0.05, "embedding_init_std": 0.5}
    return ModelArgs(**{**base, **kw})


def tiny_model(vocab: int, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_args(vocab, **kw))


def tiny_weights(model: Transformer, tokenizer_dir: Path) -> ModelWeights:
    return ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer_dir))


@pytest.fixture(scope="session")
def pairs(tokenizer, tmp_path_factory) -> PreferenceData:
    """The shipped pairs, tokenized (none is too long for 128 tokens)."""
    q = tmp_path_factory.mktemp("pref-quarantine") / "q.jsonl"
    with Quarantine(q) as quarantine:
        data = load_pairs([PAIRS], tokenizer, 128, quarantine)
    assert not data.quarantined
    return data
