"""The evaluate stage end to end on a tiny pretrain run: every checkpoint in the table, perplexity per
source, benchmark tasks, and bad input counted (or refused) rather than scored."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from lmhpc.config import ConfigError, load_config
from lmhpc.evaluate.scoring import TooLong
from lmhpc.runner import run_stage
from tests.train.fixtures import make_tokenized, sample_texts, tiny_pretrain

BAD_TASK = [
    {"context": "the quick brown fox", "choices": ["jumps over", "sleeps"], "gold": 0},
    {"context": "seven tired wizards", "choices": [], "gold": 0},
    "{not json",
    {"context": "cold grey seas " * 150, "choices": ["north", "south"], "gold": 1},
    {"context": "old stone bridges", "choices": ["and rivers", "or seas"], "gold": 5},
    {"context": "a lazy dog", "choices": ["while", "near"], "gold": 1},
]


PRETRAIN = tiny_pretrain(train={"steps": 4}, checkpoint={"interval": 2, "keep_last": 3}, model={"max_seq_len": 256})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A run folder with tokenizer, tokenize and a pretrain stage of two checkpoints."""
    base = tmp_path_factory.mktemp("evaluate-run")
    run_dir = base / "runs" / "ev"
    make_tokenized(run_dir)
    config = base / "pretrain.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "ev", "runs_dir": str(base / "runs"), "stages": ["pretrain"]},
                                      "wandb": {"mode": "disabled"}, "pretrain": PRETRAIN}))
    assert run_stage(load_config(config), "pretrain") == 0
    return base


def write_config(base, name: str, evaluate: dict) -> object:
    (base / "task.jsonl").write_text("".join((d if isinstance(d, str) else json.dumps(d)) + "\n" for d in BAD_TASK))
    (base / "heldout.jsonl").write_text("".join(
        json.dumps({"text": t, "source": s}) + "\n" for t, s in zip(sample_texts(6, seed=9), "abcabc")))
    config = base / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "ev", "runs_dir": str(base / "runs"), "stages": ["evaluate"]},
        "wandb": {"mode": "disabled"}, "pretrain": PRETRAIN,
        "evaluate": {"tasks": ["arc_easy", "piqa"], "limit": 6, "all_checkpoints": True,
                     "task_files": [{"name": "mine", "path": "task.jsonl"}],
                     "perplexity": {"texts": [{"path": "heldout.jsonl", "source": None}], "lambada": 2,
                                    "prefixes": [str(base / "runs" / "ev" / "tokenize" / "part-00000")]},
                     **evaluate},
    }))
    return load_config(config)


def test_stage_scores_every_checkpoint_and_counts_bad_items(pretrained, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = write_config(pretrained, "eval", {})
    assert run_stage(cfg, "evaluate") == 0
    stage = cfg.run_dir / "evaluate"
    results = json.loads((stage / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == ["pretrain/step-2", "pretrain/step-4"]
    for row in results["models"]:
        ppl = row["perplexity"]
        assert set(ppl) == {"texts", "part-00000", "lambada"}
        texts = ppl["texts"]
        assert set(texts["per_source"]) == {"a", "b", "c"} and texts["docs"] == 6
        assert 0 < texts["bits_per_byte"] and texts["perplexity"] > 1
        assert ppl["lambada"]["docs"] == 2 and ppl["lambada"]["license"] == "CC BY 4.0"
        assert row["tasks"]["arc_easy"]["items"] + sum(row["tasks"]["arc_easy"]["skipped"].values()) == 6
        mine = row["tasks"]["mine"]
        assert mine["items"] == 2  # of 6 lines: 2 scorable
        assert mine["skipped"] == {"empty_choices": 1, "malformed_line": 1, "too_long": 1, "bad_gold": 1}
        assert 0 <= mine["acc"] <= 1 and mine["acc_stderr"] is not None
    # the checkpoints differ, so do their scores
    first, last = (r["perplexity"]["part-00000"]["loss"] for r in results["models"])
    assert last < first
    assert results["licenses"]["arc_easy"] == "CC BY-SA 4.0"
    table = (stage / "results.md").read_text()
    assert "pretrain/step-4" in table and "arc_easy acc_norm" in table and "±" in table
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["items_skipped"]["malformed_line"] == 2  # once per model
    assert (stage / "DONE").exists()


def test_too_long_items_can_fail_the_stage(pretrained, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = write_config(pretrained, "strict", {"too_long": "error", "tasks": [], "perplexity": {},
                                               "all_checkpoints": False})
    shutil.rmtree(cfg.run_dir / "evaluate", ignore_errors=True)
    with pytest.raises(TooLong, match="mine: an item needs"):
        run_stage(cfg, "evaluate")
    assert not (cfg.run_dir / "evaluate" / "DONE").exists()


def test_config_errors_name_the_key(pretrained):
    with pytest.raises(ConfigError, match="evaluate.tasks\\[0\\]"):
        write_config(pretrained, "bad1", {"tasks": ["nope"]})
    with pytest.raises(ConfigError, match="evaluate.all_checkpoints"):
        write_config(pretrained, "bad2", {"models": ["x"]})
