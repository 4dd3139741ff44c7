"""PPO scored by a reward model (the reward stage's format): the scores of a rollout batch are the model's."""

from __future__ import annotations

import json

import pytest
import torch

from lmhpc.exchange.load import load_model
from tests.align.conftest import StageRun, run_config


@pytest.mark.slow
def test_ppo_scores_with_the_reward_model(tmp_path, policy_source, char_tokenizer_dir):
    from lmhpc.exchange.weights import read_tokenizer_files
    from lmhpc.preference.reward_model import RewardModel, load_reward_model, save_reward_model

    policy = load_model(policy_source).model
    rm_dir = save_reward_model(RewardModel.from_policy(policy, head_seed=3), tmp_path / "rm",
                               read_tokenizer_files(char_tokenizer_dir))
    section = {"init_from": str(policy_source), "reward_model": str(rm_dir), "rewards": [],
               "task": {"kinds": ["arithmetic"], "max_operand": 4, "num_records": 32, "eval_records": 0},
               "rollout_batch_size": 16, "num_ppo_epochs": 2, "sampling": {"max_completion_length": 4},
               "train": {"steps": 4, "lr": 1e-3, "global_batch_size": 8, "micro_batch_size": 8, "max_len": 64,
                         "device": "cpu", "checkpoint_interval": 0}}
    run = StageRun(run_config(tmp_path, "ppo-rm", ["ppo"], {"ppo": section}), "ppo")
    assert run.run(timeout=300) == [0], run.logs()
    rows = run.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "reward" not in rows[0] and "objective/scores" in rows[0]
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["score"] == "reward model"
    # the one rollout batch of the run is kept (it served 4 updates): rescore it with the reward model
    [saved] = list((run.stage_dir / "rollouts").rglob("gen-0.pt"))
    batch = torch.load(saved, weights_only=False)
    rollout = batch.rollout
    scores = load_reward_model(rm_dir).score(rollout.tokens, rollout.prompt_lens + rollout.completion_lens)
    assert rows[0]["objective/scores"] == pytest.approx(scores.mean().item(), rel=1e-5, abs=1e-6)
    assert scores.std() > 0
