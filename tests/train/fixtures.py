"""Small inputs for pretrain tests: a real sentencepiece tokenizer and Megatron .bin/.idx data,
laid out as the tokenizer and tokenize stages leave them (with their DONE markers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = ("the quick brown fox jumps over a lazy dog while seven tired wizards quietly brew strong "
         "coffee near old stone bridges and rivers that run north into cold grey seas").split()


def sample_texts(n: int, seed: int = 0) -> list[str]:
    """Sentences from a fixed word list with a little structure (learnable by a tiny model)."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        start = int(rng.integers(0, len(WORDS)))
        length = int(rng.integers(20, 60))
        texts.append(" ".join(WORDS[(start + 2 * j + int(rng.integers(0, 2))) % len(WORDS)] for j in range(length)))
    return texts


def make_tokenizer(folder: Path, vocab_size: int = 96) -> Path:
    """Train a sentencepiece model into ``folder/tokenizer.model`` and mark the stage done."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(sample_texts(200, seed=1)) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=vocab_size,
                                   model_type="bpe", character_coverage=1.0, bos_id=-1, eos_id=1, unk_id=0,
                                   pad_id=-1, num_threads=1, minloglevel=2)
    (folder / "DONE").write_text("{}\n")
    return folder / "tokenizer.model"


def make_tokenized(run_dir: Path, n_docs: int = 120, shards: int = 2, vocab_size: int = 96) -> list[Path]:
    """A tokenizer stage and a tokenize stage output (``shards`` prefixes + blend.json) under ``run_dir``."""
    import sentencepiece as spm

    from lmhpc.train.data import write_indexed_dataset

    model = make_tokenizer(run_dir / "tokenizer", vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    out = run_dir / "tokenize"
    prefixes = []
    texts = sample_texts(n_docs, seed=2)
    for s in range(shards):
        docs = [np.array(sp.encode(t) + [sp.eos_id()], dtype=np.int64) for t in texts[s::shards]]
        prefixes.append(write_indexed_dataset(out / f"part-{s:05d}", docs, sp.vocab_size()))
    # the tokenize stage's blend.json: Megatron's --data-path as a list, absolute and relative
    weights = [1.0 / len(prefixes)] * len(prefixes)
    (out / "blend.json").write_text(json.dumps({
        "data_path": [x for w, p in zip(weights, prefixes) for x in (w, str(p))],
        "data_path_relative": [x for w, p in zip(weights, prefixes) for x in (w, p.name)],
        "eod_id": sp.eos_id(),
    }))
    (out / "DONE").write_text("{}\n")
    return prefixes


def tiny_pretrain(**overrides) -> dict:
    """A pretrain section for a 2-layer, dim-64 model on 32-token sequences."""
    section = {
        "model": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 64},
        "train": {"steps": 6, "seq_len": 32, "micro_batch_size": 4, "grad_accum": 1, "device": "cpu",
                  "vocab_multiple_of": 32},
        "optimizer": {"lr": 3e-3, "warmup_steps": 2},
        "checkpoint": {"interval": 0, "keep_last": 2},
        "spike": {"policy": "off"},
    }
    for key, value in overrides.items():
        section.setdefault(key, {})
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    return section
