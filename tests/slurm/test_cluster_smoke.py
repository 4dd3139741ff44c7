"""Smoke tests of the real SLURM cluster the pipeline's slurm executor relies on.

Each checks one behaviour the project depends on: batch jobs reach accounting, dependencies order and
cancel jobs, array jobs, MPI under srun, and requeue with SLURM_RESTART_COUNT.
"""

from __future__ import annotations

import subprocess
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import SlurmCluster

pytestmark = pytest.mark.slurm

VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"


def write_script(path: Path, body: str) -> Path:
    """Write an executable bash job script."""
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).strip() + "\n")
    path.chmod(0o755)
    return path


def test_batch_job_completes_in_sacct(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "hello.sh", 'echo "hello from $SLURM_JOB_ID"')
    job = slurm_cluster.sbatch(script, "--job-name=smoke-hello", f"--output={tmp_path}/%j.out")

    rows = slurm_cluster.wait_final(job, timeout=60)

    assert rows[job].state == "COMPLETED"
    assert rows[job].exit_code == "0:0"
    assert (tmp_path / f"{job}.out").read_text().strip() == f"hello from {job}"


def test_failing_job_is_failed_with_its_exit_code(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "fail.sh", "exit 3")
    job = slurm_cluster.sbatch(script, "--job-name=smoke-fail", f"--output={tmp_path}/%j.out")

    rows = slurm_cluster.wait_final(job, timeout=60)

    assert rows[job].state == "FAILED"
    assert rows[job].exit_code == "3:0"


def test_afterok_dependency_runs_after_its_parent(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    order = tmp_path / "order.txt"
    first = write_script(tmp_path / "first.sh", f"sleep 2\necho first >> {order}")
    second = write_script(tmp_path / "second.sh", f"echo second >> {order}")
    a = slurm_cluster.sbatch(first, "--job-name=smoke-first", f"--output={tmp_path}/%j.out")
    b = slurm_cluster.sbatch(
        second, "--job-name=smoke-second", f"--dependency=afterok:{a}", f"--output={tmp_path}/%j.out"
    )

    reason = slurm_cluster.run("squeue", "-h", "-j", b, "-o", "%r").stdout.strip()
    rows_a = slurm_cluster.wait_final(a, timeout=60)
    rows_b = slurm_cluster.wait_final(b, timeout=60)

    assert reason == "Dependency"
    assert rows_a[a].state == rows_b[b].state == "COMPLETED"
    assert order.read_text().split() == ["first", "second"]
    assert rows_b[b].start >= rows_a[a].end  # ISO timestamps compare as strings


def test_kill_on_invalid_dep_cancels_dependant_of_failed_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    marker = tmp_path / "dependant-ran"
    failing = write_script(tmp_path / "failing.sh", "exit 1")
    dependant = write_script(tmp_path / "dependant.sh", f"touch {marker}")
    a = slurm_cluster.sbatch(failing, "--job-name=smoke-failing", f"--output={tmp_path}/%j.out")
    b = slurm_cluster.sbatch(
        dependant,
        "--job-name=smoke-dependant",
        f"--dependency=afterok:{a}",
        "--kill-on-invalid-dep=yes",
        f"--output={tmp_path}/%j.out",
    )

    rows_a = slurm_cluster.wait_final(a, timeout=60)
    rows_b = slurm_cluster.wait_final(b, timeout=60)

    assert rows_a[a].state == "FAILED"
    assert rows_b[b].state == "CANCELLED"
    assert not marker.exists()


def test_array_job_runs_every_task(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = write_script(tmp_path / "array.sh", f'echo "$SLURM_ARRAY_TASK_ID" > {tmp_path}/task-$SLURM_ARRAY_TASK_ID')
    job = slurm_cluster.sbatch(script, "--job-name=smoke-array", "--array=0-3", f"--output={tmp_path}/%A_%a.out")

    rows = slurm_cluster.wait_final(job, timeout=90, tasks=4)

    assert sorted(rows) == [f"{job}_{i}" for i in range(4)]
    assert {r.state for r in rows.values()} == {"COMPLETED"}
    for i in range(4):
        assert (tmp_path / f"task-{i}").read_text().strip() == str(i)


MPI_PROGRAM = """
from mpi4py import MPI
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
print(f"rank={comm.Get_rank()} size={comm.Get_size()} sum={total}", flush=True)
"""


def test_srun_pmi2_gives_one_mpi_world(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    if not VENV_PYTHON.exists():
        pytest.skip(f"{VENV_PYTHON} missing: run env/setup_cpu.sh")
    probe = subprocess.run([str(VENV_PYTHON), "-c", "import mpi4py"], check=False, capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("mpi4py is not installed in the project's virtual environment")

    proc = slurm_cluster.run(
        "srun",
        "-n",
        "2",
        "--mpi=pmi2",
        "--job-name=smoke-mpi",
        f"--chdir={tmp_path}",
        str(VENV_PYTHON),
        "-c",
        MPI_PROGRAM,
        timeout=90,
    )

    assert sorted(proc.stdout.split("\n")[:-1]) == ["rank=0 size=2 sum=3", "rank=1 size=2 sum=3"], proc.stderr


def test_requeue_restarts_job_with_restart_count(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    attempts = tmp_path / "attempts.txt"
    # The first attempt blocks until it is requeued; the second one finishes at once.
    script = write_script(
        tmp_path / "requeue.sh",
        f"""
        echo "attempt ${{SLURM_RESTART_COUNT:-0}}" >> {attempts}
        if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 120 & wait $!; fi
        """,
    )
    job = slurm_cluster.sbatch(
        script, "--job-name=smoke-requeue", "--requeue", "--open-mode=append", f"--output={tmp_path}/%j.out"
    )
    slurm_cluster.wait_state(job, "RUNNING", timeout=60)
    _wait_for_file(attempts)

    slurm_cluster.run("scontrol", "requeue", job)
    # A requeued job may start again only after the credential expires (cred_expire=10 → ~11 s).
    rows = slurm_cluster.wait_final(job, timeout=90)

    assert rows[job].state == "COMPLETED"
    assert attempts.read_text().split("\n")[:-1] == ["attempt 0", "attempt 1"]
    history = [r.state for r in slurm_cluster.sacct(job, duplicates=True)]
    assert history == ["REQUEUED", "COMPLETED"]


def _wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not written within {timeout}s"
        time.sleep(0.1)
