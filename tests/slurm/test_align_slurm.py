"""The alignment chain sft → reference → dpo on the real SLURM cluster (dependent jobs, afterok), with USR2 from
``scancel --signal`` in the middle of dpo: the stage saves, requeues itself, resumes, and every stage's output
equals an uninterrupted local run's (dpo's losses bitwise, the reference log-probs byte for byte)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lmhpc.train.checkpoint import complete_steps
from tests.align.conftest import CHAT_DATA, StageRun, chat_tokenizer, run_config, tiny_source  # noqa: F401
from tests.preference.conftest import PAIRS
from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]
STAGES = ["sft", "reference", "dpo"]
DPO_STEPS = 200


def _sections(source: Path) -> dict:
    train = {"lr": 2e-3, "warmup_steps": 2, "micro_batch_size": 4, "global_batch_size": 8, "max_len": 192,
             "device": "cpu"}
    return {
        "sft": {"data": [str(CHAT_DATA / "chat.jsonl")], "init_from": str(source),
                "train": {**train, "steps": 10, "checkpoint_interval": 0}},
        "reference": {"batch_size": 16, "device": "cpu"},
        "dpo": {"data": [str(PAIRS)], "loss_type": "sigmoid", "beta": 0.1,
                "train": {**train, "steps": DPO_STEPS, "lr": 5e-4, "checkpoint_interval": 50}},
    }


def test_sft_reference_dpo_chain_with_a_requeue_equals_local(tmp_path, slurm_cluster, tiny_source):  # noqa: F811
    local = run_config(tmp_path, "local", STAGES, _sections(tiny_source))
    for stage in STAGES:
        job = StageRun(local, stage)
        assert job.run(timeout=600) == [0], job.logs()
    expected = StageRun(local, "dpo").losses()

    config = run_config(tmp_path, "slurm", STAGES, _sections(tiny_source))
    data = yaml.safe_load(config.read_text())
    data["executor"] = {"kind": "slurm", "partition": "debug", "signal_delay_s": 30,
                        "env": {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}}
    for stage in STAGES:
        data["resources"][stage].update({"timeout_min": 20, "mem_gb": 4, "cpus_per_task": 1})
    config.write_text(yaml.safe_dump(data))
    env = {**slurm_cluster.env, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(config), "--executor", "slurm"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "runs" / "slurm"
    jobs = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    dpo_job = jobs["dpo"]["job_ids"][0]
    metrics = run_dir / "dpo" / "metrics.jsonl"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 60):
        time.sleep(0.05)
    rows_before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    assert 60 <= rows_before < DPO_STEPS, f"dpo logged {rows_before} rows: not signalled in the middle"
    slurm_cluster.run("scancel", "--signal=USR2", dpo_job)
    states = slurm_cluster.wait_final(dpo_job, timeout=900)
    assert states[dpo_job].state == "COMPLETED", states
    history = slurm_cluster.sacct(dpo_job, duplicates=True)
    assert any(r.state in ("REQUEUED", "PREEMPTED") for r in history), history
    log = "".join(p.read_text() for p in (run_dir / "slurm" / "dpo").rglob("*.out"))
    assert "requeueing SLURM job" in log and "resumed from checkpoint step" in log
    for stage in STAGES:
        assert (run_dir / stage / "DONE").exists(), stage
    assert complete_steps(run_dir / "dpo" / "checkpoints")[-1] == DPO_STEPS
    assert (run_dir / "reference" / "logps.npz").read_bytes() == \
        (tmp_path / "runs" / "local" / "reference" / "logps.npz").read_bytes()
    got = [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]
    assert got == expected
