"""The short drill of tools/drill.py on the real cluster: a tiny demo chain (no quantize) run clean with the
local executor, then on SLURM with two faults (USR2 into a training stage, a drained and resumed node; a hard
``scontrol requeue`` is left to the long drill, where it loses a W&B step); every stage finishes, data outputs
are byte-identical, losses bitwise equal, W&B steps whole, sacct shows the requeue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]


def test_short_drill_survives_its_faults(slurm_cluster, tmp_path):  # noqa: F811
    out_json = tmp_path / "drill.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "drill.py"), "--quick", "--faults", "2", "--kinds", "usr2,drain",
         "--seed", "1",
         "--runs-dir", str(tmp_path / "runs"), "--out", str(out_json), "--timeout", "280"],
        capture_output=True, text=True, env={**slurm_cluster.env, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=600,
    )
    assert out_json.exists(), out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(out_json.read_text())
    assert summary["problems"] == [], out.stdout[-4000:]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert summary["faults_injected"] >= 2
    assert summary["faults_survived"] == summary["faults_injected"]
    assert all(summary["losses_bitwise_equal"].values())
    assert sum(summary["sacct_requeues"].values()) >= 1
