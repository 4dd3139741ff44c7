"""The sft stage on the real SLURM cluster: two torch tasks (FSDP2), USR2 from ``scancel --signal``; the stage
saves, requeues itself, the requeued job resumes and the loss curve equals an uninterrupted local run's."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from lmhpc.train.checkpoint import complete_steps
from tests.align.conftest import REPO, StageRun, run_config
from tests.align.test_sft_stage import _sft
from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
STEPS = 60


def test_usr2_requeue_resumes_sft_with_identical_losses(tmp_path, tiny_source, slurm_cluster):  # noqa: F811
    section = _sft(tiny_source, train={"steps": STEPS, "micro_batch_size": 2, "global_batch_size": 4,
                                       "checkpoint_interval": 25})
    reference = StageRun(run_config(tmp_path, "local", ["sft"], {"sft": section}, world=2), "sft", 2)
    assert reference.run() == [0, 0], reference.logs()

    config = run_config(tmp_path, "slurm", ["sft"], {"sft": section}, world=2)
    data = yaml.safe_load(config.read_text())
    data["executor"] = {"kind": "slurm", "partition": "debug", "signal_delay_s": 30,
                        "env": {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}}
    data["resources"]["sft"].update({"timeout_min": 20, "mem_gb": 4, "cpus_per_task": 1})
    config.write_text(yaml.safe_dump(data))
    run = StageRun(config, "sft", 2)
    env = {**slurm_cluster.env, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(config), "--executor", "slurm"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    job = json.loads((run.run_dir / "pipeline.json").read_text())["stages"]["sft"]["job_ids"][0]
    metrics = run.stage_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        time.sleep(0.05)
    rows_before = len(metrics.read_text().splitlines())
    assert 4 <= rows_before < STEPS, "the job finished before it could be signalled"
    slurm_cluster.run("scancel", "--signal=USR2", job)
    states = slurm_cluster.wait_final(job, timeout=600)
    assert states[job].state == "COMPLETED", states
    history = slurm_cluster.sacct(job, duplicates=True)
    assert any(r.state in ("REQUEUED", "PREEMPTED") for r in history), history
    log = "".join(p.read_text() for p in (run.run_dir / "slurm" / "sft").rglob("*.out"))
    assert "requeueing SLURM job" in log and "resumed from checkpoint step" in log
    assert (run.stage_dir / "DONE").exists()
    assert complete_steps(run.stage_dir / "checkpoints")[-1] == STEPS
    assert run.losses() == reference.losses()
