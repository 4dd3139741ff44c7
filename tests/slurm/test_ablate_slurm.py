"""The ablate stage on the real local SLURM cluster: one array task per share of the variants, the comparison as
the finalize job that waits for them (afterok), the same comparison as the stage's own checks demand."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ablate.ablate_setup import VARIANTS, ablation_config, check_comparison, tokenizer_model
from tests.conftest import write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]


def _lmhpc(env, *args: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def _wait(env, run_dir: Path, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = json.loads(_lmhpc(env, "status", str(run_dir), "--json").stdout)
        if all(r["state"] in ("done", "failed", "cancelled") for r in rows):
            return rows
        time.sleep(3)
    raise AssertionError(f"ablation in {run_dir} not finished after {timeout}s: {rows}")


def test_ablation_as_an_array_with_a_dependent_comparison(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    data = ablation_config(tmp_path, name="abs", tasks=2)
    data["executor"] = {"kind": "slurm", "partition": "debug", "signal_delay_s": 30}
    run_dir = tmp_path / "runs" / "abs"
    tokenizer_model(run_dir / "tokenizer")  # the run's tokenizer stage, complete
    config = write_config(tmp_path / "abs.yaml", data)
    out = _lmhpc(env, "run", str(config), "--executor", "slurm")
    assert "ablate: submitted job(s)" in out.stdout
    array_id, final_id = json.loads((run_dir / "pipeline.json").read_text())["stages"]["ablate"]["job_ids"]
    rows = _wait(env, run_dir, timeout=1200)
    assert rows[0]["state"] == "done", rows
    states = slurm_cluster.wait_final(array_id, tasks=2)
    assert {k: v.state for k, v in states.items()} == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    assert slurm_cluster.wait_final(final_id)[final_id].state == "COMPLETED"
    final_start = slurm_cluster.sacct(final_id)[0].start
    assert all(final_start >= r.end for r in states.values())  # afterok held the comparison back
    comparison = check_comparison(run_dir)
    assert comparison["setup"]["steps"] == 4
    stats = json.loads((run_dir / "ablate" / "stats.json").read_text())
    assert stats["units"] == len(VARIANTS) and set(stats["variants"]) == set(VARIANTS)
