"""The ppo stage end to end, as separate processes: on a task whose reward is known (arithmetic, rewarded for
well-formed and right answers) the reward rises while the KL to the starting model stays bounded and the adaptive
coefficient reacts to it; preemption → resume gives bitwise-identical losses (rollouts, epochs and mini-batches,
value head and KL coefficient included)."""

from __future__ import annotations

import json

import pytest
import torch

from lmhpc.exchange.load import load_model
from tests.align.conftest import StageRun, run_config
from tests.rl.test_grpo_stage import REWARDS, _interrupt


def _ppo(source, **kw) -> dict:
    train = {"steps": 60, "lr": 3e-3, "schedule": "constant", "global_batch_size": 32, "micro_batch_size": 32,
             "max_len": 64, "device": "cpu", "checkpoint_interval": 0, **kw.pop("train", {})}
    task = {"kinds": ["arithmetic"], "max_operand": 4, "num_records": 64, "eval_records": 16}
    return {"init_from": str(source), "task": task, "rewards": REWARDS, "rollout_batch_size": 64,
            "num_ppo_epochs": 2, "sampling": {"max_completion_length": 4, "temperature": 1.0}, "train": train, **kw}


def _run(tmp_path, name, section) -> StageRun:
    return StageRun(run_config(tmp_path, name, ["ppo"], {"ppo": section}), "ppo")


@pytest.mark.slow
def test_reward_rises_and_the_kl_stays_bounded(tmp_path, policy_source):
    run = _run(tmp_path, "ppo", _ppo(policy_source, target_kl=0.5, kl_horizon=300, kl_estimator="k3"))
    assert run.run(timeout=400) == [0], run.logs()
    rows = run.metrics()
    assert [r["step"] for r in rows] == list(range(1, 61))
    for key in ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/rlhf_reward",
                "objective/scores", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/num_eos_tokens", "num_tokens"):
        assert key in rows[-1], key
    rollouts = rows[::4]  # 2 epochs × 2 mini-batches per rollout batch
    first = sum(r["objective/scores"] for r in rollouts[:3]) / 3
    last = sum(r["objective/scores"] for r in rollouts[-3:]) / 3
    assert last > first + 0.15, (first, last)
    for r in rollouts:  # the KL part of the reward is −β·KL, and the KL stays within a few nats
        assert r["objective/non_score_reward"] == pytest.approx(-r["objective/kl_coef"] * r["objective/kl"],
                                                               rel=1e-4, abs=1e-7)
        assert 0 <= r["objective/kl"] < 8.0
    # the adaptive controller: β falls while the KL is below its target, rises once it is above
    coefs = [r["objective/kl_coef"] for r in rollouts]
    kls = [r["objective/kl"] for r in rollouts]
    for (b0, k0), b1 in zip(zip(coefs, kls), coefs[1:]):
        assert (b1 > b0) if k0 > 0.5 else (b1 < b0), (coefs, kls)
    assert any(k > 0.5 for k in kls) and any(k < 0.5 for k in kls)
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["kl_coef_final"] > coefs[0] * 0.9
    loaded = load_model(run.stage_dir)
    assert not torch.equal(loaded.model.output.weight, load_model(policy_source).model.output.weight)


@pytest.mark.slow
def test_preemption_resumes_with_bitwise_identical_losses(tmp_path, policy_source):
    """Four updates per rollout batch (2 epochs × 2 mini-batches of 2 micro-batches): the resume lands inside a
    rollout batch and must reuse it, with the adaptive KL coefficient of that time."""
    section = _ppo(policy_source, target_kl=0.1, kl_horizon=100,
                   train={"steps": 14, "checkpoint_interval": 5, "micro_batch_size": 16})
    reference = _run(tmp_path, "reference", section)
    assert reference.run(timeout=400) == [0], reference.logs()
    run = _run(tmp_path, "interrupted", section)
    saved = _interrupt(run, 6, 14)
    assert run.run(timeout=400) == [0], run.logs()
    assert [r["step"] for r in run.metrics()] == list(range(1, 15))
    for key in ("loss", "loss/value_avg", "objective/kl", "objective/kl_coef", "grad_norm"):
        assert [r[key] for r in run.metrics()] == [r[key] for r in reference.metrics()], key
    assert f"resumed from checkpoint step {saved}" in (run.run_dir / "ppo-rank0.log").read_text()
    a, b = load_model(run.stage_dir).model, load_model(reference.stage_dir).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
