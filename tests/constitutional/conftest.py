"""Fixtures of the Constitutional AI tests: a sentencepiece tokenizer with ChatML tokens trained on the shipped
constitution and prompts, tiny models saved as consolidated folders, and run configs that start from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lmhpc.config import load_config
from lmhpc.constitutional.constitution import SHIPPED_CONSTITUTION, SHIPPED_PROMPTS
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from tests.train.fixtures import sample_texts

torch.set_num_threads(1)  # tiny models on shared cores


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> Path:
    """A 320-piece BPE sentencepiece model (unk 0, eos 1, bos 2, pad 3, ChatML tokens), trained on the shipped
    constitution and prompts and some sample sentences."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("cai-tokenizer")
    lines = sample_texts(60, seed=4)
    for principle in json.loads(SHIPPED_CONSTITUTION.read_text())["principles"]:
        lines += [principle["critique_request"], principle["revision_request"], principle["preference"]]
    lines += [json.loads(line)["prompt"] for line in SHIPPED_PROMPTS.read_text().splitlines()]
    lines += ["Consider the following conversation between a human and an assistant:", "Options:", "(A) (B)",
              "The answer is: (A)", "The answer is: (B)", "Human:", "user", "assistant"]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=320, model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   unk_id=0, eos_id=1, bos_id=2, pad_id=3,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], num_threads=1, minloglevel=2)
    (folder / "corpus.txt").unlink()
    return folder


def tiny_args(vocab: int, **kw) -> ModelArgs:
    return ModelArgs(**{"vocab_size": vocab, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                        "max_seq_len": 512, "init_std": 0.1, "embedding_init_std": 1.0, **kw})


def random_model(vocab: int, seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_args(vocab, **kw)).eval()


def successor_model(vocab: int, successor: dict[int, int], default: int, scale: float = 8.0) -> Transformer:
    """A one-layer model whose next token after ``i`` is ``successor.get(i, default)`` with near certainty (logit
    ``scale * sqrt(dim)`` above the others), whatever came before: one-hot embeddings, mixers and FFNs that add
    nothing."""
    dim = -(-vocab // 4) * 4
    model = Transformer(ModelArgs(vocab_size=vocab, dim=dim, n_layers=1, n_heads=4, max_seq_len=512))
    with torch.no_grad():
        model.tok_embeddings.weight.copy_(torch.eye(vocab, dim))
        block = model.layers["0"]
        block.attention.wo.weight.zero_()
        block.feed_forward.w2.weight.zero_()
        out = torch.zeros(vocab, dim)
        for i in range(vocab):
            out[successor.get(i, default), i] = scale
        model.output.weight.copy_(out)
    return model.eval()


def save_model(model: Transformer, tokenizer_dir: Path, out: Path) -> Path:
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    return write_consolidated(ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer_dir)), out)


@pytest.fixture(scope="session")
def chat_tokenizer(chat_tokenizer_dir):
    from lmhpc.exchange.tokenizer import load_tokenizer

    return load_tokenizer(chat_tokenizer_dir)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, chat_tokenizer_dir, chat_tokenizer) -> Path:
    """A random tiny model (512-token context) with the chat tokenizer, as a consolidated folder."""
    return save_model(random_model(chat_tokenizer.vocab_size), chat_tokenizer_dir,
                      tmp_path_factory.mktemp("cai-model") / "model")


def write_run_config(base: Path, name: str, stages: list[str], sections: dict, run: dict | None = None):
    """A run config in ``base`` (runs under ``base/runs``) with W&B off; returns the loaded config."""
    config = base / f"{name}.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": name, "runs_dir": str(base / "runs"), "stages": stages,
                                              "seed": 11, **(run or {})},
                                      "wandb": {"mode": "disabled"}, **sections}))
    return load_config(config)


OUTPUTS = {"prompts.jsonl", "prompt_selection.json", "revisions.jsonl", "sft.jsonl", "pairs.jsonl", "labels.jsonl"}


def stage_files(stage_dir: Path) -> dict[str, bytes]:
    """The stage's outputs (what it generates: chunks, merged files, quarantine), by path relative to it; the
    runner's records (logs, events, timings, markers) are left out."""
    out = {}
    for path in sorted(stage_dir.rglob("*")):
        rel = path.relative_to(stage_dir)
        if path.is_file() and (rel.parts[0] in ("chunks", "quarantine") or str(rel) in OUTPUTS):
            out[str(rel)] = path.read_bytes()
    assert {"prompts.jsonl", "prompt_selection.json"} <= set(out), sorted(out)
    return out
