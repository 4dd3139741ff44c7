"""curate -> dedup submitted to the real SLURM cluster (dedup as one job of 2 tasks, ``srun --mpi=pmi2``),
compared byte for byte with the same chain run locally under mpiexec.

Needs the local cluster: ``tools/slurm_cluster.sh start && eval "$(tools/slurm_cluster.sh env)"``;
skipped when SLURM_CONF is unset or ``scontrol ping`` gets no answer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.dedup.chain import chain_config, lmhpc, write_jsonl_inputs
from tests.dedup.corpus import kept_ids, output_tree

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    if not env.get("SLURM_CONF"):
        pytest.skip('SLURM_CONF is not set: tools/slurm_cluster.sh start && eval "$(tools/slurm_cluster.sh env)"')
    if not shutil.which("scontrol"):
        pytest.skip("scontrol is not installed")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip("scontrol ping timed out")
    if "is UP" not in ping.stdout:
        pytest.skip(f"slurmctld does not answer: {ping.stdout.strip() or ping.stderr.strip()}")
    return {**env, "WANDB_MODE": "disabled"}


def wait_for_stage(env: dict[str, str], run_dir: Path, stage: str, timeout: float = 240) -> dict:
    """Poll ``lmhpc status --json`` until ``stage`` is done or failed/cancelled."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        out = lmhpc(env, "status", str(run_dir), "--json", timeout=60)
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
        row = next(r for r in rows if r["stage"] == stage)
        if row["state"] in ("done", "failed", "cancelled"):
            return row
        time.sleep(2)
    queue = subprocess.run(["squeue"], capture_output=True, text=True, env=env).stdout
    raise AssertionError(f"{stage} not finished after {timeout}s: {rows}\n{queue}")


def test_dedup_under_srun_matches_local_mpiexec(tmp_path, planted):
    env = cluster_env()
    write_jsonl_inputs(tmp_path / "in", planted)
    slurm_cfg = chain_config(tmp_path / "slurm.yaml", tmp_path / "in", tmp_path / "slurm-runs", ranks=2,
                             partition="debug", signal_delay_s=30)
    res = lmhpc(env, "run", str(slurm_cfg), "--executor", "slurm", "--stages", "curate,dedup")
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = tmp_path / "slurm-runs" / "t"
    row = wait_for_stage(env, run_dir, "dedup")
    logs = "\n".join(p.read_text()[-2000:] for p in sorted(run_dir.rglob("*.out"))[-4:])
    assert row["state"] == "done", f"{row}\n{logs}"

    local_cfg = chain_config(tmp_path / "local.yaml", tmp_path / "in", tmp_path / "local-runs", ranks=2)
    res = lmhpc(env, "run", str(local_cfg), "--executor", "local", "--stages", "curate,dedup")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    on_slurm, local = run_dir / "dedup", tmp_path / "local-runs" / "t" / "dedup"
    assert json.loads((on_slurm / "stats.json").read_text())["ranks"] == 2  # two MPI ranks under srun
    assert kept_ids(on_slurm) == kept_ids(local)
    assert output_tree(on_slurm) == output_tree(local)
