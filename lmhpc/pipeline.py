"""The stage chain of a run: which stages, in which order, on which executor; and its status."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from lmhpc.config import SNAPSHOT_FILE, ConfigError, RunConfig, write_snapshot
from lmhpc.context import DONE_MARKER
from lmhpc.fsutil import read_json
from lmhpc.integrity import check_recorded, remove_stage_outputs
from lmhpc.launch.state import STATE_FILE
from lmhpc.stages import STAGES, dependants, ordered


def plan(cfg: RunConfig, only: list[str] | None = None, restart: list[str] | None = None) -> list[str]:
    """Stages to run, in chain order. Fails before anything is submitted when a chosen stage reads a stage
    that is neither chosen nor complete, or when a stage folder was built under another config (unless that
    stage is to be restarted)."""
    unknown = [s for s in [*(only or []), *(restart or [])] if s not in STAGES]
    if unknown:
        raise ConfigError("--stages" if set(unknown) & set(only or []) else "--restart",
                          f"unknown stage(s) {unknown}; known: {list(STAGES)}")
    chosen = ordered(only if only else cfg.run.stages)
    restarting = set(restarting_stages(cfg, restart or []))
    for stage in chosen:
        for needed in STAGES[stage].reads_for(cfg):
            complete = (cfg.run_dir / needed / DONE_MARKER).exists() and needed not in restarting
            if needed not in chosen and not complete:
                raise ConfigError(
                    "run.stages",
                    f"stage '{stage}' reads the output of '{needed}', which is neither in this run nor complete "
                    f"in {cfg.run_dir}",
                    cfg.source_file,
                )
    checked = [s for s in STAGES if s in chosen or any(s in STAGES[c].reads_for(cfg) for c in chosen)]
    for stage in checked:
        if stage in restarting:
            continue
        changed = check_recorded(cfg, stage, cfg.run_dir / stage)
        if changed:
            raise ConfigError(f"{stage}", changed, cfg.source_file)
    return chosen


def restarting_stages(cfg: RunConfig, restart: list[str]) -> list[str]:
    """The stages ``--restart`` starts over: those named and every stage that reads them."""
    out = list(restart)
    for stage in restart:
        out += dependants(stage, cfg=cfg)
    return ordered(list(dict.fromkeys(out)))


def restart_stages(cfg: RunConfig, restart: list[str]) -> list[str]:
    """Remove the outputs of the named stages and of every stage that reads them; returns those removed."""
    removed = []
    for stage in restarting_stages(cfg, restart):
        if remove_stage_outputs(cfg.run_dir / stage):
            removed.append(stage)
    return removed


def preflight(cfg: RunConfig, stages: list[str]) -> None:
    """Each chosen stage's own checks (inputs readable, formats known); fails naming every problem."""
    problems = []
    for stage in stages:
        problems += STAGES[stage].run_preflight(cfg)
    if problems:
        key = problems[0].split(":", 1)[0] if ":" in problems[0] else "run.stages"
        raise ConfigError(key, "the inputs cannot be used:\n  " + "\n  ".join(problems), cfg.source_file)


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "PREEMPTED", "STAGE_OUT", "SIGNALING")


def active_jobs(run_dir: Path) -> dict[str, str]:
    """Recorded jobs of a run that are still queued or running: job id → state (SLURM via squeue, or
    the local launcher's process)."""
    data = read_json(Path(run_dir) / STATE_FILE, default=None)
    if not data:
        return {}
    if data.get("executor") == "local":
        pid, host = data.get("launcher_pid"), data.get("launcher_host")
        if pid and host == socket.gethostname() and pid != os.getpid() and _alive(int(pid)):
            return {f"pid {pid}": "RUNNING"}
        return {}
    ids = [j for s in data.get("stages", {}).values() for j in s.get("job_ids", [])]
    return squeue_states(ids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """Live states of these jobs (array tasks included) from squeue; {} when none is queued."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"cannot ask SLURM whether this run's jobs are still queued: {e}") from e
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if state.strip() in ACTIVE_STATES:
            states[jid.strip()] = state.strip()
    return states


def cancel_jobs(job_ids: list[str], wait_s: float = 60.0) -> None:
    """scancel these jobs and wait until squeue no longer lists them."""
    import time

    subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=60)
    deadline = time.time() + wait_s
    while squeue_states(job_ids) and time.time() < deadline:
        time.sleep(1)
    left = squeue_states(job_ids)
    if left:
        raise RuntimeError(f"jobs still listed by squeue {wait_s:.0f}s after scancel: {left}")


def guard_concurrent(cfg: RunConfig, cancel: bool = False) -> None:
    """Refuse to launch a run whose recorded jobs are still queued or running (they would race on the run
    folder), unless ``cancel``: then cancel them first."""
    active = active_jobs(cfg.run_dir)
    if not active:
        return
    listed = ", ".join(f"{j} ({s})" for j, s in sorted(active.items()))
    if not cancel:
        raise ConfigError("run.name", f"run {cfg.run.name} in {cfg.run_dir} still has jobs queued or running: "
                          f"{listed}; wait for them (lmhpc status), or pass --cancel to cancel them and launch again",
                          cfg.source_file)
    if any(j.startswith("pid ") for j in active):
        raise ConfigError("run.name", f"run {cfg.run.name} is being run by a local launcher ({listed}) on this "
                          "machine; stop it first", cfg.source_file)
    print(f"[lmhpc] cancelling {listed}")
    cancel_jobs(sorted({j.split("_")[0] for j in active}))


def launch(cfg: RunConfig, config_path: str, overrides: list[str], stages: list[str], dry_run: bool = False,
           restart: list[str] | None = None, cancel: bool = False) -> int:
    """Run (local) or submit (slurm) the chain. Dry runs print the sbatch scripts and submit nothing.

    Before anything runs (dry runs only print, on a machine that may not see the data): the inputs are checked
    (each stage's preflight), jobs of this run still queued are
    refused (or cancelled with ``cancel``), the stages to restart are removed, and the resolved config is
    frozen into ``<run>/config.yaml``, which every job then loads."""
    if dry_run:
        if cfg.executor.kind == "slurm":
            from lmhpc.launch.slurm import render_scripts

            for name, script in render_scripts(cfg, stages).items():
                print(f"# ===== {name} =====")
                print(script)
            return 0
        from lmhpc.launch.local import stage_command

        for stage in stages:
            print(f"{stage}: {' '.join(stage_command(cfg, stage, str(cfg.run_dir / SNAPSHOT_FILE), []))}")
        return 0
    preflight(cfg, stages)
    guard_concurrent(cfg, cancel)
    if restart:
        removed = restart_stages(cfg, restart)
        print(f"[lmhpc] restart: removed the outputs of {', '.join(removed) or 'nothing (no output yet)'}")
    snapshot = str(write_snapshot(cfg))
    if cfg.executor.kind == "slurm":
        from lmhpc.launch.slurm import SlurmPipeline

        SlurmPipeline(cfg, snapshot, []).submit(stages)
        print(f"[lmhpc] submitted; follow with: lmhpc status {cfg.run_dir}")
        return 0
    from lmhpc.launch.local import LocalExecutor

    return LocalExecutor(cfg, snapshot, []).run(stages)


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
