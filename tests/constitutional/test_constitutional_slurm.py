"""constitutional → ai_feedback on the real local SLURM cluster: each stage an array of two tasks over the prompt
chunks and a finalize job that merges them; the files are those of one local process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmhpc.config import load_config
from lmhpc.runner import run_stage
from tests.conftest import write_config
from tests.constitutional.conftest import stage_files
from tests.slurm.conftest import slurm_cluster  # noqa: F401  (the fixture)

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
    raise AssertionError(f"run {run_dir} not finished after {timeout}s: {rows}")


def test_both_stages_as_arrays_on_slurm_give_the_local_files(slurm_cluster, tmp_path, model_dir):  # noqa: F811
    env = {**slurm_cluster.env, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    sections = {"constitutional": {"init_from": str(model_dir), "max_prompts": 6, "chunk_size": 2, "rounds": 1,
                                   "threads": 1, "sampling": {"max_new_tokens": 6}},
                "ai_feedback": {"init_from": str(model_dir), "chunk_size": 2, "threads": 1,
                                "sampling": {"max_new_tokens": 6}}}
    resources = {s: {"tasks": 2, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 20} for s in sections}

    def config(name: str, executor: dict) -> Path:
        return write_config(tmp_path / f"{name}.yaml", {
            "run": {"name": name, "runs_dir": str(tmp_path / "runs"), "stages": ["constitutional", "ai_feedback"],
                    "seed": 5},
            "executor": executor, "resources": resources, "wandb": {"mode": "disabled"}, **sections})

    on_slurm = config("cai", {"kind": "slurm", "partition": "debug", "signal_delay_s": 30,
                              "env": {"OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}})
    out = _lmhpc(env, "run", str(on_slurm), "--executor", "slurm")
    assert "constitutional: submitted job(s)" in out.stdout and "ai_feedback: submitted job(s)" in out.stdout
    run_dir = tmp_path / "runs" / "cai"
    rows = _wait(env, run_dir, timeout=900)
    assert [r["state"] for r in rows] == ["done", "done"], rows
    for stage in ("constitutional", "ai_feedback"):
        array_id = json.loads((run_dir / "pipeline.json").read_text())["stages"][stage]["job_ids"][0]
        states = slurm_cluster.wait_final(array_id, tasks=2)
        assert {r.state for r in states.values()} == {"COMPLETED"}, states

    local = load_config(config("local", {"kind": "local"}))
    local_dir = local.run_dir
    for stage in ("constitutional", "ai_feedback"):
        assert run_stage(local, stage) == 0
        assert stage_files(run_dir / stage) == stage_files(local_dir / stage), stage
    pairs = (run_dir / "ai_feedback" / "pairs.jsonl").read_text().splitlines()
    assert all(set(json.loads(p)) == {"prompt", "chosen", "rejected", "principle", "p_chosen", "probabilities"}
               for p in pairs)
