"""dpo and reward under FSDP2 on 2 ranks equal 1 rank (the pretrain parity tolerance), the reference stage split
over 2 ranks stores the same log-probs, and a preemption signal mid-run resumes with bitwise-identical losses."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.train.checkpoint import complete_steps
from tests.align.conftest import StageRun, run_config
from tests.preference.conftest import PAIRS, tiny_model, tiny_weights

RTOL = 2e-4  # the pretrain parity tolerance
STEPS = 12


@pytest.fixture(scope="module")
def source(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("pref-parallel")
    return write_consolidated(tiny_weights(tiny_model(400, seed=5), tokenizer_dir), root / "model")


def _train(**kw) -> dict:
    return {"steps": STEPS, "lr": 2e-3, "warmup_steps": 2, "micro_batch_size": 2, "global_batch_size": 8,
            "max_len": 128, "device": "cpu", "checkpoint_interval": 5, **kw}


def _sections(source, stage: str, **kw) -> dict:
    if stage == "reward":
        return {"reward": {"data": [str(PAIRS)], "init_from": str(source), "center_rewards_coefficient": 0.01,
                           "train": _train(), **kw}}
    return {"dpo": {"data": [str(PAIRS)], "init_from": str(source), "loss_type": "robust", "label_smoothing": 0.1,
                    "beta": 0.2, "train": _train(), **kw}, "reference": {"batch_size": 8, "device": "cpu"}}


def _run(tmp_path, name, source, stage, world=1) -> StageRun:
    stages = ["reference", "dpo"] if stage == "dpo" else ["reward"]
    config = run_config(tmp_path, name, stages, _sections(source, stage), world)
    if stage == "dpo":
        ref = StageRun(config, "reference", world)
        assert ref.run() == [0] * world, ref.logs()
    return StageRun(config, stage, world)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_two_ranks_equal_one(tmp_path, source, stage):
    one = _run(tmp_path, "one", source, stage)
    assert one.run() == [0], one.logs()
    two = _run(tmp_path, "two", source, stage, world=2)
    assert two.run() == [0, 0], two.logs()
    if stage == "dpo":
        with np.load(one.run_dir / "reference" / "logps.npz") as a, \
                np.load(two.run_dir / "reference" / "logps.npz") as b:
            for key in ("chosen", "rejected"):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-6)
            assert (a["chosen_tokens"] == b["chosen_tokens"]).all()
    rows1, rows2 = one.metrics(), two.metrics()
    assert len(rows1) == len(rows2) == STEPS
    assert rows1[-1]["loss"] < rows1[0]["loss"]
    keys = ["loss", "rewards/margins", "logps/chosen"] if stage == "dpo" else ["loss", "margin", "mean_reward"]
    for r1, r2 in zip(rows1, rows2):
        for key in keys:
            assert r2[key] == pytest.approx(r1[key], rel=RTOL, abs=1e-6), (r1["step"], key)
        assert r2["num_tokens"] == r1["num_tokens"]


def _interrupt(run: StageRun, after_rows: int) -> int:
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
    assert codes == [REQUEUE_EXIT_CODE] * run.world, (codes, run.logs())
    saved = complete_steps(run.stage_dir / "checkpoints")[-1]
    assert after_rows <= saved < STEPS
    return saved


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_preemption_resumes_with_bitwise_identical_losses(tmp_path, source, stage):
    whole = _run(tmp_path, "whole", source, stage)
    assert whole.run() == [0], whole.logs()
    run = _run(tmp_path, "interrupted", source, stage)
    _interrupt(run, 7)  # after the step-5 checkpoint: the resume must take the preemption one
    assert run.run() == [0], run.logs()
    a, b = whole.metrics(), run.metrics()
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    metric_keys = [k for k in a[0] if k not in ("step_seconds",)]
    for r1, r2 in zip(a, b):
        assert {k: r1[k] for k in metric_keys} == {k: r2[k] for k in metric_keys}, r1["step"]
