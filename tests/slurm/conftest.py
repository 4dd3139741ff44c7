"""Fixtures for tests that run against a real SLURM cluster.

Start one with ``tools/slurm_cluster.sh start`` and ``eval "$(tools/slurm_cluster.sh env)"``; without
``SLURM_CONF`` or an answering controller, every test that uses ``slurm_cluster`` is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# sacct states after which a job (or array task) will not change any more.
FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        'slurm: needs a running SLURM cluster (tools/slurm_cluster.sh start && eval "$(tools/slurm_cluster.sh env)")',
    )


@dataclass(frozen=True)
class JobRecord:
    """One sacct row: a job, or one task of an array job."""

    job_id: str
    state: str
    exit_code: str
    start: str
    end: str


class SlurmCluster:
    """A handle on the running cluster: its environment plus small sbatch/sacct helpers."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM command with the cluster's environment and return its result."""
        proc = subprocess.run(
            list(args),
            check=False,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, script: Path, *options: str) -> str:
        """Submit ``script`` with extra sbatch options and return the job id."""
        out = self.run("sbatch", "--parsable", f"--chdir={script.parent}", *options, str(script)).stdout
        return out.strip().split(";")[0]

    def sacct(self, job_id: str, *, duplicates: bool = False) -> list[JobRecord]:
        """sacct rows for a job's allocations (no steps); one per array task."""
        args = ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,Start,End"]
        if duplicates:
            args.append("--duplicates")
        rows = []
        for line in self.run(*args).stdout.splitlines():
            if not line.strip():
                continue
            jid, state, exit_code, start, end = line.split("|")
            # "CANCELLED by 0" -> "CANCELLED"
            rows.append(JobRecord(jid, state.split()[0], exit_code, start, end))
        return rows

    def wait_final(self, job_id: str, timeout: float = 60, *, tasks: int = 1) -> dict[str, JobRecord]:
        """Wait until sacct shows every one of ``tasks`` rows of ``job_id`` in a final state.

        Returns the rows by job id (``"12"`` or ``"12_0"``, ``"12_1"``, …). Fails with the last rows
        seen and the queue when the timeout passes.
        """
        deadline = time.monotonic() + timeout
        rows: list[JobRecord] = []
        while time.monotonic() < deadline:
            rows = self.sacct(job_id)
            if len(rows) >= tasks and all(r.state in FINAL_STATES for r in rows):
                return {r.job_id: r for r in rows}
            time.sleep(0.5)
        queue = self.run("squeue", "-o", "%i %T %r", check=False).stdout
        raise AssertionError(f"job {job_id} not finished after {timeout}s; sacct: {rows}; squeue:\n{queue}")

    def wait_state(self, job_id: str, state: str, timeout: float = 60) -> None:
        """Wait until squeue shows ``job_id`` in ``state`` (e.g. RUNNING)."""
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            seen = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
            if seen == state:
                return
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not {state} after {timeout}s (last: {seen or 'gone'})")


def _skip_reason(env: dict[str, str]) -> str | None:
    conf = env.get("SLURM_CONF")
    if not conf:
        return 'SLURM_CONF is not set: run tools/slurm_cluster.sh start && eval "$(tools/slurm_cluster.sh env)"'
    if not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist: run tools/slurm_cluster.sh start"
    missing: Sequence[str] = [c for c in ("scontrol", "sbatch", "sacct", "squeue", "srun") if not shutil.which(c)]
    if missing:
        return f"SLURM client commands not found: {', '.join(missing)}"
    try:
        ping = subprocess.run(
            ["scontrol", "ping"],
            check=False,
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return "scontrol ping timed out: is the cluster running? (tools/slurm_cluster.sh status)"
    if "is UP" not in ping.stdout:
        return f"slurmctld is not answering (scontrol ping: {ping.stdout.strip() or ping.stderr.strip()})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The running cluster named by SLURM_CONF; skips the test when there is none."""
    env = dict(os.environ)
    reason = _skip_reason(env)
    if reason:
        if os.environ.get("LMHPC_REQUIRE_SLURM") == "1":
            pytest.fail(f"LMHPC_REQUIRE_SLURM=1 but no cluster: {reason}")
        pytest.skip(reason)
    yield SlurmCluster(env)
