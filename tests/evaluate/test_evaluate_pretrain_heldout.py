"""Held-out perplexity during pretraining: logged every ``pretrain.eval.interval`` steps, and equal to the loss
of the saved checkpoint on the same held-out sequences."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from lmhpc.config import ConfigError, load_config
from lmhpc.runner import run_stage
from lmhpc.train.heldout import heldout_sequences
from tests.train.fixtures import make_tokenized, sample_texts, tiny_pretrain


def test_heldout_loss_every_interval_matches_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_dir = tmp_path / "runs" / "h"
    make_tokenized(run_dir)
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts(12, seed=42)))
    section = tiny_pretrain(train={"steps": 4}, checkpoint={"interval": 0},
                            eval={"interval": 2, "texts": [str(held)], "max_tokens": 400})
    config = tmp_path / "h.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "h", "runs_dir": str(tmp_path / "runs"), "stages": ["pretrain"]},
                                      "wandb": {"mode": "disabled"}, "pretrain": section}))
    cfg = load_config(config)
    assert run_stage(cfg, "pretrain") == 0
    stats = json.loads((run_dir / "pretrain" / "stats.json").read_text())
    assert [r["step"] for r in stats["heldout"]] == [2, 4]
    assert stats["heldout"][1]["loss"] < stats["heldout"][0]["loss"]

    from lmhpc.exchange import load_model

    loaded = load_model(run_dir / "pretrain", tokenizer=run_dir / "tokenizer")
    rows = heldout_sequences([str(held)], cfg.path, run_dir / "tokenizer" / "tokenizer.model",
                             loaded.tokenizer.eos_id, 32, 400, tmp_path / "q.jsonl")
    assert rows.shape == (400 // 33, 33)
    with torch.no_grad():
        logits = loaded.model(rows[:, :-1])
    want = float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()))
    assert stats["heldout"][1]["loss"] == pytest.approx(want, rel=1e-4)


def test_heldout_config_is_checked(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "c", "runs_dir": str(tmp_path), "stages": ["pretrain"]},
                                      "pretrain": tiny_pretrain(eval={"interval": 5})}))
    with pytest.raises(ConfigError, match="pretrain.eval.texts"):
        load_config(config)
