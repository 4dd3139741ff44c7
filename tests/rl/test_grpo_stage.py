"""The grpo stage end to end, as separate processes: the reward rises on the arithmetic task, the policy opens
with lmhpc.exchange, bad task records are quarantined, and preemption → resume gives bitwise-identical losses
(rollout sampling, several iterations per generation batch and the KL to the reference included)."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from lmhpc.exchange.load import load_model
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.train.checkpoint import complete_steps
from tests.align.conftest import StageRun, run_config

REWARDS = [{"function": "lmhpc.rl.rewards:exact_answer"},
           {"function": "lmhpc.rl.rewards:format_reward", "weight": 0.5}]


def _grpo(source, **kw) -> dict:
    train = {"steps": 30, "lr": 3e-3, "schedule": "constant", "global_batch_size": 64, "micro_batch_size": 64,
             "max_len": 64, "device": "cpu", "checkpoint_interval": 0, **kw.pop("train", {})}
    task = {"kinds": ["arithmetic"], "max_operand": 4, "num_records": 64, "eval_records": 32, **kw.pop("task", {})}
    return {"init_from": str(source), "task": task, "rewards": REWARDS, "num_generations": 8,
            "sampling": {"max_completion_length": 4}, "train": train, **kw}


def _run(tmp_path, name, section) -> StageRun:
    return StageRun(run_config(tmp_path, name, ["grpo"], {"grpo": section}), "grpo")


@pytest.mark.slow
def test_reward_rises_on_arithmetic_and_the_policy_opens(tmp_path, policy_source):
    bad = tmp_path / "extra.jsonl"
    bad.write_text("\n".join([json.dumps({"id": "x1", "prompt": "3+1=", "answer": "4"}), "{not json",
                              json.dumps({"id": "x2", "prompt": "2+2="}), json.dumps({"id": "x3", "prompt": " ",
                                                                                       "answer": "1"}),
                              json.dumps({"id": "x1", "prompt": "1+1=", "answer": "2"}),
                              json.dumps({"id": "x4", "prompt": "1+" * 40 + "1=", "answer": "41"})]) + "\n")
    run = _run(tmp_path, "grpo", _grpo(policy_source, task={"files": [str(bad)]}))
    assert run.run(timeout=400) == [0], run.logs()
    rows = run.metrics()
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss", "reward", "reward_std", "rewards/exact_answer/mean", "rewards/format_reward/std",
                "frac_reward_zero_std", "entropy", "clip_ratio/region_mean", "clip_ratio/low_min",
                "completions/mean_length", "num_tokens"):
        assert key in rows[-1], key
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)
    assert rows[-1]["entropy"] < rows[0]["entropy"]
    assert all(b["num_tokens"] > a["num_tokens"] for a, b in zip(rows, rows[1:]))
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["docs_in"] == 70 and stats["docs_out"] == 65
    assert stats["quarantine_reasons"] == {"not_json": 1, "missing_field": 1, "empty_prompt": 1, "duplicate_id": 1,
                                           "too_long": 1}
    quarantined = [json.loads(line) for line in (run.stage_dir / "quarantine" / "tasks.jsonl").read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantined) == sorted(stats["quarantine_reasons"])
    assert len((run.stage_dir / "tasks.jsonl").read_text().splitlines()) == 65
    assert stats["accuracy_before"] is not None and stats["accuracy_after"] is not None
    loaded = load_model(run.stage_dir)
    start = load_model(policy_source).model
    assert not torch.equal(loaded.model.output.weight, start.output.weight)


def _interrupt(run: StageRun, after_rows: int, total: int) -> int:
    procs = run.start()
    path = run.stage_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while not path.exists() or len(path.read_text().splitlines()) < after_rows:
            assert all(p.poll() is None for p in procs), f"the job ended before the signal\n{run.logs()}"
            assert time.time() < deadline, run.logs()
            time.sleep(0.02)
        procs[0].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [REQUEUE_EXIT_CODE], (codes, run.logs())
    saved = complete_steps(run.stage_dir / "checkpoints")[-1]
    assert after_rows <= saved < total
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("iterations", [3, 1])
def test_preemption_resumes_with_bitwise_identical_losses(tmp_path, policy_source, iterations):
    """Three iterations per generation batch, a KL to the reference and periodic checkpoints: the resume lands
    inside a generation batch and must reuse it. One iteration: the batch is sampled again, from the same
    weights and seed."""
    section = _grpo(policy_source, num_iterations=iterations, beta=0.04, loss_type="grpo" if iterations > 1 else "dapo",
                    train={"steps": 14, "checkpoint_interval": 6, "global_batch_size": 32, "micro_batch_size": 16})
    reference = _run(tmp_path, "reference", section)
    assert reference.run(timeout=400) == [0], reference.logs()
    run = _run(tmp_path, "interrupted", section)
    saved = _interrupt(run, 7, 14)
    assert run.run(timeout=400) == [0], run.logs()
    assert [r["step"] for r in run.metrics()] == list(range(1, 15))
    for key in ("loss", "reward", "kl", "entropy", "grad_norm"):
        assert [r[key] for r in run.metrics()] == [r[key] for r in reference.metrics()], key
    assert f"resumed from checkpoint step {saved}" in (run.run_dir / "grpo-rank0.log").read_text()
    assert any(r["kl"] > 0 for r in reference.metrics())
    a, b = load_model(run.stage_dir).model, load_model(reference.stage_dir).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
