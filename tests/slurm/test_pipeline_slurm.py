"""The SLURM executor against the real local cluster: submitit arrays with afterok, requeue mid-way,
sacct states in `lmhpc status`, cancelled dependants, the plain sbatch scripts, MPI under srun."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.helpers import curate_config, tree_bytes, write_jsonl_corpus

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]


def lmhpc(env, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def wait_status(env, run_dir: Path, timeout: float = 240) -> list[dict]:
    """Poll `lmhpc status` until no stage is pending/running/submitted."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = json.loads(lmhpc(env, "status", str(run_dir), "--json").stdout)
        if all(r["state"] in ("done", "failed", "cancelled") for r in rows):
            return rows
        time.sleep(1)
    raise AssertionError(f"pipeline in {run_dir} not finished after {timeout}s: {rows}")


def slurm_config(tmp_path: Path, corpus: Path, name: str = "t", tasks: int = 2, **extra) -> Path:
    data = curate_config(tmp_path, corpus, **extra)
    data["run"]["name"] = name
    data["executor"] = {"kind": "slurm", "partition": "debug", "signal_delay_s": 30}
    data["resources"] = {"curate": {"tasks": tasks, "timeout_min": 10, "mem_gb": 1}}
    return write_config(tmp_path / f"{name}.yaml", data)


def test_array_then_finalize_with_afterok(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=4, docs_per_file=50, gz=True)
    cfg = slurm_config(tmp_path, corpus)
    t0 = time.monotonic()
    out = lmhpc(env, "run", str(cfg), "--executor", "slurm")
    assert time.monotonic() - t0 < 60  # returns at once, it does not wait for the jobs
    assert "curate: submitted job(s)" in out.stdout
    run_dir = tmp_path / "runs" / "t"
    array_id, final_id = json.loads((run_dir / "pipeline.json").read_text())["stages"]["curate"]["job_ids"]
    rows = wait_status(env, run_dir)
    assert rows[0]["state"] == "done", rows
    states = slurm_cluster.wait_final(array_id, tasks=2)
    assert {k: v.state for k, v in states.items()} == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    assert slurm_cluster.wait_final(final_id)[final_id].state == "COMPLETED"
    final_start = slurm_cluster.sacct(final_id)[0].start
    assert all(final_start >= r.end for r in states.values())  # afterok held the finalize job back
    rows = json.loads(lmhpc(env, "status", str(run_dir), "--json").stdout)
    assert rows[0]["sacct"][final_id] == "COMPLETED"
    # same output as the local executor
    lmhpc(env, "run", str(cfg), "--executor", "local", "run.name=local")
    assert tree_bytes(run_dir / "curate" / "data") == tree_bytes(tmp_path / "runs" / "local" / "curate" / "data")


def test_failing_stage_cancels_its_dependant(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    corpus = tmp_path / "broken"
    corpus.mkdir()
    (corpus / "part-000.jsonl").write_text("{not json\n" * 200)  # readable, but every record is bad
    cfg = slurm_config(tmp_path, corpus, name="bad", tasks=1)
    lmhpc(env, "run", str(cfg), "--executor", "slurm")
    run_dir = tmp_path / "runs" / "bad"
    array_id, final_id = json.loads((run_dir / "pipeline.json").read_text())["stages"]["curate"]["job_ids"]
    # a one-task array shows in sacct under the array's own id
    assert [r.state for r in slurm_cluster.wait_final(array_id).values()] == ["FAILED"]
    # kill-on-invalid-dep: the dependant is cancelled, not left pending forever
    assert slurm_cluster.wait_final(final_id, timeout=60)[final_id].state == "CANCELLED"
    rows = wait_status(env, run_dir)
    assert rows[0]["state"] == "failed"
    assert "FAILED" in rows[0]["sacct"].values() and rows[0]["sacct"][final_id] == "CANCELLED"


def test_requeue_midway_resumes_from_saved_units(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=12, docs_per_file=2000)
    cfg = slurm_config(tmp_path, corpus, name="rq", tasks=1)
    lmhpc(env, "run", str(cfg), "--executor", "slurm")
    run_dir = tmp_path / "runs" / "rq"
    array_id, _ = json.loads((run_dir / "pipeline.json").read_text())["stages"]["curate"]["job_ids"]
    units = run_dir / "curate" / "_units"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (units.exists() and any(units.glob("*.json"))):
        time.sleep(0.05)
    done_before = len(list(units.glob("*.json")))
    assert 1 <= done_before < 12, "the task finished before it could be requeued"
    slurm_cluster.run("scontrol", "requeue", array_id)  # a one-task array: the task is the job
    rows = wait_status(env, run_dir, timeout=300)
    assert rows[0]["state"] == "done", rows
    history = slurm_cluster.sacct(array_id, duplicates=True)
    assert any(r.state in ("REQUEUED", "PREEMPTED") for r in history), history
    log = "".join(p.read_text() for p in (run_dir / "slurm" / "curate").rglob("*.out"))
    assert "already done before" in log
    lmhpc(env, "run", str(cfg), "--executor", "local", "run.name=clean")
    assert tree_bytes(run_dir / "curate" / "data") == tree_bytes(tmp_path / "runs" / "clean" / "curate" / "data")


def test_plain_sbatch_pipeline_script(slurm_cluster, tmp_path):
    env = dict(
        slurm_cluster.env, STAGES="curate", CURATE_TASKS="2", LMHPC_PYTHON=sys.executable, SBATCH_PARTITION="debug"
    )
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=3, docs_per_file=20)
    cfg = slurm_config(tmp_path, corpus, name="plain")
    out = subprocess.run(
        ["bash", str(REPO / "slurm" / "pipeline.sh"), str(cfg)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    ids = dict(line.split() for line in out.stdout.splitlines())
    assert set(ids) == {"curate", "curate.finalize"}
    assert slurm_cluster.wait_final(ids["curate"], tasks=2, timeout=120)
    assert slurm_cluster.wait_final(ids["curate.finalize"], timeout=120)[ids["curate.finalize"]].state == "COMPLETED"
    assert (tmp_path / "runs" / "plain" / "curate" / "DONE").exists()


def test_mpi_ranks_under_srun_pmi2(slurm_cluster, tmp_path):
    from tests.unit.test_mpi import SCRIPT, rank_lines

    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    job = tmp_path / "mpi.sbatch"
    job.write_text(
        f"#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --output={tmp_path}/mpi-%j.out\n"
        f"cd {REPO}\nsrun --mpi=pmi2 {sys.executable} {script}\n"
    )
    job_id = slurm_cluster.sbatch(job)
    assert slurm_cluster.wait_final(job_id, timeout=120)[job_id].state == "COMPLETED"
    lines = rank_lines((tmp_path / f"mpi-{job_id}.out").read_text())
    assert lines == ["rank=0 world=2 before=False after=True", "rank=1 world=2 before=False after=True"]
