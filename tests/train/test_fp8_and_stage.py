"""The stage in-process: torchao float8 (emulated on CPU) trains and is labelled; real FP8 without a
GPU fails with a clear message; a full local run logs to W&B offline and writes stats."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmhpc.config import load_config
from lmhpc.runner import run_stage
from lmhpc.train.metrics import read_metrics
from lmhpc.train.stage import METRICS_FILE
from tests.train.fixtures import tiny_pretrain


def test_emulated_fp8_trains(pretrain_run):
    pytest.importorskip("torchao")
    run = pretrain_run("fp8", tiny_pretrain(train={"steps": 8, "fp8": True, "fp8_emulate": True}))
    assert run_stage(load_config(run.config), "pretrain") == 0
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["precision"] == "fp32+fp8-emulated"
    losses = [r["loss"] for r in read_metrics(run.stage_dir / METRICS_FILE)]
    assert losses[-1] < losses[0]


def test_real_fp8_without_a_gpu_is_a_clear_error(pretrain_run):
    pytest.importorskip("torchao")
    run = pretrain_run("fp8real", tiny_pretrain(train={"steps": 2, "fp8": True}))
    with pytest.raises(RuntimeError, match="FP8 training needs a CUDA GPU.*fp8_emulate=true"):
        run_stage(load_config(run.config), "pretrain")


def test_local_run_logs_to_wandb_offline(pretrain_run, repo_root):
    """``lmhpc run CONFIG --stages pretrain`` (the local executor) with W&B offline: MoE + Mamba hybrid."""
    section = tiny_pretrain(train={"steps": 6},
                            model={"layer_pattern": "MA", "moe": {"num_experts": 4, "top_k": 2}},
                            checkpoint={"interval": 3})
    run = pretrain_run("e2e", section)
    text = run.config.read_text().replace("mode: disabled", "mode: offline")
    run.config.write_text(text)
    env = {"PATH": "/usr/bin:/bin", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo_root)}
    res = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(run.config), "--stages", "pretrain"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    stage = run.stage_dir
    assert (stage / "DONE").exists()
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["steps"] == 6 and stats["checkpoints_saved"] == 2 and stats["final_loss"] > 0
    rows = read_metrics(stage / METRICS_FILE)
    assert set(rows[-1]["moe"]) == {"layer0", "layer1"}
    assert sum(rows[-1]["moe"]["layer0"]["load"].values()) == pytest.approx(1.0)
    from lmhpc.track import offline_run_dirs, read_history

    runs = offline_run_dirs(stage)
    assert len(runs) == 1
    history = [row for row in read_history(runs[0]) if "loss" in row]
    assert [row["_step"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert "moe/layer1/load/expert0" in history[-1] and "tokens_per_s" in history[-1]


def _losses_in_process(pretrain_run, name: str, **train) -> list[float]:
    run = pretrain_run(name, tiny_pretrain(train={"steps": 5, **train}))
    assert run_stage(load_config(run.config), "pretrain") == 0
    return run.losses()


def test_activation_checkpointing_recomputes_the_same_numbers(pretrain_run):
    plain = _losses_in_process(pretrain_run, "plain")
    recomputed = _losses_in_process(pretrain_run, "ac", activation_checkpointing="full")
    assert recomputed == plain


def test_bf16_autocast_trains_close_to_fp32(pretrain_run):
    fp32 = _losses_in_process(pretrain_run, "fp32")
    bf16 = _losses_in_process(pretrain_run, "bf16", precision="bf16")
    assert bf16[-1] < bf16[0]
    assert bf16 == pytest.approx(fp32, rel=0.05)


@pytest.mark.slow
def test_compiled_blocks_train_like_eager(pretrain_run):
    """torch.compile per block (inductor on CPU; about a minute of compiling on 2 cores)."""
    eager = _losses_in_process(pretrain_run, "eager")
    compiled = _losses_in_process(pretrain_run, "compiled", compile=True)
    assert compiled == pytest.approx(eager, rel=1e-4)
