"""A run that chains sft → reward → ppo and grpo: ppo and grpo start from the sft stage's model, ppo is scored by
the reward stage's model, grpo by verifiable reward functions; every stage completes and its model opens."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from lmhpc.exchange.load import load_model
from tests.align.conftest import CHAT_DATA, REPO, chat_tokenizer, write_tiny_model  # noqa: F401 (a fixture)

PAIRS = REPO / "data" / "align" / "preference"


@pytest.mark.slow
def test_sft_reward_ppo_grpo_chain(tmp_path, chat_tokenizer):  # noqa: F811
    tiny_source = write_tiny_model(tmp_path / "start", chat_tokenizer)
    pairs = sorted(PAIRS.glob("*.jsonl"))
    if not pairs:
        pytest.skip("no shipped preference pairs")
    train = {"steps": 3, "lr": 1e-3, "global_batch_size": 4, "micro_batch_size": 4, "max_len": 160, "device": "cpu",
             "checkpoint_interval": 0}
    task = {"kinds": ["arithmetic"], "num_records": 32, "eval_records": 8, "max_operand": 9}
    config = tmp_path / "chain.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "chain", "runs_dir": str(tmp_path / "runs"), "stages": ["sft", "reward", "ppo", "grpo"],
                "seed": 3},
        "wandb": {"mode": "disabled"},
        "sft": {"data": [str(CHAT_DATA / "chat.jsonl")], "init_from": str(tiny_source), "train": train},
        "reward": {"data": [str(p) for p in pairs], "train": train},
        "ppo": {"task": task, "rewards": [], "rollout_batch_size": 8, "num_ppo_epochs": 1,
                "sampling": {"max_completion_length": 6}, "train": train},
        "grpo": {"task": task, "num_generations": 4, "sampling": {"max_completion_length": 6},
                 "train": {**train, "global_batch_size": 8, "micro_batch_size": 8}},
    }))
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(config)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run_dir = tmp_path / "runs" / "chain"
    ppo = json.loads((run_dir / "ppo" / "stats.json").read_text())
    grpo = json.loads((run_dir / "grpo" / "stats.json").read_text())
    assert ppo["score"] == "reward model" and ppo["steps"] == 3
    assert ppo["init_from"] == str(run_dir / "sft") and grpo["init_from"] == str(run_dir / "sft")
    assert grpo["steps"] == 3 and grpo["reward_functions"] == ["lmhpc.rl.rewards:exact_answer"]
    for stage in ("ppo", "grpo"):
        assert load_model(run_dir / stage).args == load_model(run_dir / "sft").args
