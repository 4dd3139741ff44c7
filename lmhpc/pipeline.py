"""The stage chain of a run: which stages, in which order, on which executor; and its status."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from lmhpc.config import ConfigError, RunConfig
from lmhpc.context import DONE_MARKER
from lmhpc.fsutil import read_json
from lmhpc.launch.state import STATE_FILE
from lmhpc.stages import STAGES, ordered


def plan(cfg: RunConfig, only: list[str] | None = None) -> list[str]:
    """Stages to run, in pipeline order. Every stage a chosen stage reads must be chosen too or be
    complete already; otherwise this fails before anything is submitted."""
    chosen = ordered(only if only else cfg.run.stages)
    unknown = [s for s in (only or []) if s not in STAGES]
    if unknown:
        raise ConfigError("--stages", f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    for stage in chosen:
        for needed in STAGES[stage].reads:
            if needed not in chosen and not (cfg.run_dir / needed / DONE_MARKER).exists():
                raise ConfigError(
                    "run.stages",
                    f"stage '{stage}' reads the output of '{needed}', which is neither in this run nor complete "
                    f"in {cfg.run_dir}",
                    cfg.source_file,
                )
    return chosen


def launch(cfg: RunConfig, config_path: str, overrides: list[str], stages: list[str], dry_run: bool = False) -> int:
    """Run (local) or submit (slurm) the chain. Dry runs print the sbatch scripts and submit nothing."""
    if cfg.executor.kind == "slurm":
        from lmhpc.launch.slurm import SlurmPipeline, render_scripts

        if dry_run:
            for name, script in render_scripts(cfg, stages).items():
                print(f"# ===== {name} =====")
                print(script)
            return 0
        SlurmPipeline(cfg, config_path, overrides).submit(stages)
        print(f"[lmhpc] submitted; follow with: lmhpc status {cfg.run_dir}")
        return 0
    from lmhpc.launch.local import LocalExecutor, stage_command

    if dry_run:
        for stage in stages:
            print(f"{stage}: {' '.join(stage_command(cfg, stage, config_path, overrides))}")
        return 0
    return LocalExecutor(cfg, config_path, overrides).run(stages)


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Job id → SLURM state from ``sacct`` (array tasks as ``<id>_<task>``); {} when sacct is absent."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "--format=JobID,State,ExitCode", "-j", ",".join(job_ids)],
            capture_output=True, text=True, timeout=30,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) >= 2:
            states[parts[0]] = parts[1].split()[0] if parts[1] else parts[1]
    return states


def jobs_of(recorded: dict[str, Any], sacct: dict[str, str]) -> dict[str, str]:
    """The sacct states of a stage's jobs (array tasks included)."""
    ids = recorded.get("job_ids", [])
    return {jid: st for jid, st in sacct.items() if any(jid == j or jid.startswith(f"{j}_") for j in ids)}


def summarize_state(stage_dir: Path, recorded: dict[str, Any], sacct: dict[str, str]) -> str:
    if (stage_dir / DONE_MARKER).exists():
        return "done"
    states = list(jobs_of(recorded, sacct).values())
    if any(s in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE") for s in states):
        return "failed"
    if any(s == "CANCELLED" for s in states):
        return "cancelled"
    if any(s in ("RUNNING", "COMPLETING") for s in states):
        return "running"
    if any(s in ("PENDING", "REQUEUED", "PREEMPTED", "RESIZING", "SUSPENDED") for s in states):
        return "pending"
    return recorded.get("state", "pending")


def status(run_dir: Path) -> list[dict[str, Any]]:
    """Each stage's state (done, running, pending, failed, cancelled) with job ids and sacct states."""
    data = read_json(Path(run_dir) / STATE_FILE, default=None)
    if data is None:
        raise FileNotFoundError(f"{run_dir} has no {STATE_FILE}: not a run folder, or nothing was launched")
    all_ids = [j for s in data["stages"].values() for j in s.get("job_ids", [])]
    sacct = sacct_states(all_ids) if data.get("executor") == "slurm" else {}
    rows = []
    for stage in data.get("order", list(data["stages"])):
        recorded = data["stages"].get(stage, {})
        rows.append({
            "stage": stage,
            "state": summarize_state(Path(run_dir) / stage, recorded, sacct),
            "job_ids": recorded.get("job_ids", []),
            "sacct": jobs_of(recorded, sacct),
        })
    return rows
