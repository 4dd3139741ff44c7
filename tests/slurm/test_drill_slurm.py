"""The short drill of tools/drill.py on the real cluster: the whole demo chain at its tiniest (curate → ... →
dpo → evaluate → quantize, then the report) run clean with the local executor, then on SLURM with one fault
of each kind at seeded random times: a preemption signal (USR2), a hard ``scontrol requeue``, ``kill -9`` of
a rank, partition-priority preemption by a job in the ``urgent`` partition, a drained and resumed node.
Every stage finishes, data outputs are byte-identical, losses bitwise equal, W&B steps neither twice nor
missing, and sacct shows the requeues."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]
KINDS = ["usr2", "requeue", "kill9", "preempt", "drain"]


def test_short_drill_survives_its_faults(slurm_cluster, tmp_path):  # noqa: F811
    out_json = tmp_path / "drill.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "tools" / "drill.py"), "--quick", "--faults", str(len(KINDS)),
         "--kinds", ",".join(KINDS), "--seed", "1",
         "--runs-dir", str(tmp_path / "runs"), "--out", str(out_json), "--timeout", "420"],
        capture_output=True, text=True, env={**slurm_cluster.env, "PYTHONPATH": str(REPO)}, cwd=REPO, timeout=900,
    )
    assert out_json.exists(), out.stdout[-4000:] + out.stderr[-4000:]
    summary = json.loads(out_json.read_text())
    assert summary["problems"] == [], out.stdout[-4000:]
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert [f["kind"] for f in summary["faults"]] == KINDS
    assert summary["faults_survived"] == summary["faults_injected"]
    assert all(summary["losses_bitwise_equal"].values()) and len(summary["losses_bitwise_equal"]) == 3
    assert sum(summary["sacct_requeues"].values()) >= 2  # the hard requeue and the killed rank at least
    assert (tmp_path / "runs" / "drill" / "quantize" / "DONE").exists()
