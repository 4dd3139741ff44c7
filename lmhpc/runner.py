"""Runs one stage in the current process, whichever executor placed it there.

Completion is recorded on disk: array stages write one marker per unit (``_units/<index>.json``,
holding that unit's stats), and every stage ends with ``stats.json``, the resolved ``config.json``
and the ``DONE`` marker, written last. A rerun skips what is done and redoes what is not, provided it
was built from the same config and inputs (:mod:`lmhpc.integrity`); otherwise it stops and says what
changed. A failed stage leaves ``stats.failed.json`` (the error and the stats gathered so far).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from lmhpc.config import RunConfig, dump_json
from lmhpc.context import DONE_MARKER, StageContext
from lmhpc.fsutil import read_json, write_json, write_text
from lmhpc.integrity import (
    UNITS_DIR,
    StageChanged,
    check_recorded,
    freeze_units,
    stage_fingerprint,
    write_start_record,
)
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE, Preempted, requeue_or_exit, stage_flag
from lmhpc.stages import STAGES
from lmhpc.timing import record_event
from lmhpc.track import open_tracker

log = logging.getLogger("lmhpc.runner")

FAILED_STATS = "stats.failed.json"


class StageFailed(RuntimeError):
    """A stage could not complete (incomplete units, broken accounting, too much bad input).
    ``stats``: what the stage (or the failing unit) had counted, written to ``stats.failed.json``."""

    def __init__(self, message: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stats = stats


class AccountingError(StageFailed):
    """``docs_in != docs_out + quarantined + sum(dropped)``."""


def setup_logging(rank: int = 0, quiet: bool = False) -> None:
    """Log lines name the rank; ``quiet`` ranks (all but rank 0 of an MPI or torch job) log warnings and
    errors only, so a job's log reads as one process's."""
    fmt = f"%(asctime)s %(levelname)s [%(name)s r{rank}] %(message)s"
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    else:
        for h in root.handlers:
            h.setFormatter(logging.Formatter(fmt))
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    for noisy in ("wandb", "urllib3", "git", "megatron", "transformer_engine", "apex"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_done(cfg: RunConfig, stage: str) -> bool:
    return (cfg.run_dir / stage / DONE_MARKER).exists()


def write_failed_stats(stage_dir: Path, error: BaseException, stats: dict[str, Any] | None) -> None:
    """Leave what a failed stage had counted for inspection (``stats.failed.json``)."""
    try:
        write_json(stage_dir / FAILED_STATS, {"error": str(error), "failed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "stats": stats or {}})
    except OSError as e:  # the failure itself matters more than this file
        log.warning("could not write %s: %s", stage_dir / FAILED_STATS, e)


# --------------------------------------------------------------------------------------------
# stats


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Numbers add up, mappings merge key by key, lists concatenate; other values keep the first."""
    out = dict(a)
    for k, v in b.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, bool) or isinstance(out[k], bool):
            out[k] = out[k]
        elif isinstance(v, (int, float)) and isinstance(out[k], (int, float)):
            out[k] = out[k] + v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = merge_stats(out[k], v)
        elif isinstance(v, list) and isinstance(out[k], list):
            out[k] = out[k] + v
    return out


def check_accounting(stats: dict[str, Any], where: str) -> None:
    """Data stages account for every document: in = out + quarantined + sum(dropped)."""
    if "docs_in" not in stats:
        return
    dropped = stats.get("dropped", {})
    total = stats.get("docs_out", 0) + stats.get("quarantined", 0) + sum(dropped.values())
    if stats["docs_in"] != total:
        raise AccountingError(
            f"{where}: docs_in={stats['docs_in']} but docs_out={stats.get('docs_out', 0)} + "
            f"quarantined={stats.get('quarantined', 0)} + dropped={sum(dropped.values())} ({dropped}) = {total}"
        )


def complete_stage(ctx: StageContext, stats: dict[str, Any], started: float) -> dict[str, Any]:
    """Rank 0: check accounting, write stats.json and config.json, log to W&B, then the DONE marker."""
    stats = dict(stats)
    stats.setdefault("stage", ctx.stage)
    stats["wall_s"] = round(time.time() - started, 3)
    check_accounting(stats, f"stage {ctx.stage}")
    write_text(ctx.stage_dir / "config.json", dump_json(ctx.cfg))
    write_json(ctx.stage_dir / "stats.json", stats)
    ctx.tracker.log({"stats": stats}, step=int(stats.get("step", 0)))
    ctx.tracker.summary(stats)
    (ctx.stage_dir / FAILED_STATS).unlink(missing_ok=True)
    write_json(ctx.stage_dir / DONE_MARKER, {"completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempt": ctx.attempt,
                                             "fingerprint": stage_fingerprint(ctx.cfg, ctx.stage)})
    log.info("stage %s complete: %s", ctx.stage, ctx.stage_dir)
    return stats


# --------------------------------------------------------------------------------------------
# placement


def _distributed_identity(kind: str) -> tuple[int, int, int, Any]:
    """(rank, world, local rank, MPI comm) for this process."""
    if kind == "mpi":
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        local = int(os.environ.get("SLURM_LOCALID") or os.environ.get("MPI_LOCALRANKID") or 0)
        return comm.Get_rank(), comm.Get_size(), local, comm
    if kind == "torch":
        if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:
            # plain srun (slurm/pretrain.sbatch): torch.distributed's env:// reads these names
            os.environ["RANK"] = os.environ["SLURM_PROCID"]
            os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
            os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
            if "MASTER_ADDR" not in os.environ:
                # rendezvous on the allocation's first node, as slurm/common.sh does for sbatch
                from lmhpc.launch.hosts import first_host

                os.environ["MASTER_ADDR"] = first_host(os.environ.get("SLURM_JOB_NODELIST")) or "127.0.0.1"
            os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 40000))
        rank = int(os.environ.get("RANK", 0))
        world = int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        return rank, world, local, None
    return 0, 1, 0, None


def unit_marker(stage_dir: Path, index: int) -> Path:
    return stage_dir / UNITS_DIR / f"{index:06d}.json"


def check_unit_marker(ctx: StageContext, marker: Path, unit: str, fingerprint: str) -> None:
    """A unit marker counts only for the same unit built under the same config."""
    data = read_json(marker)
    if data.get("unit") != str(unit) or data.get("fingerprint", fingerprint) != fingerprint:
        raise StageChanged(f"stage {ctx.stage}: {marker} was written for unit {data.get('unit')!r} under "
                           f"fingerprint {data.get('fingerprint')}, not {unit!r} under {fingerprint}; "
                           f"rerun with --restart {ctx.stage}")


def run_units(ctx: StageContext, module: Any, task: int, num_tasks: int) -> dict[str, int]:
    """Process this task's share (``index % num_tasks == task``) of an array stage's units."""
    units = list(module.units(ctx))
    freeze_units(ctx, module, units)
    fingerprint = stage_fingerprint(ctx.cfg, ctx.stage)
    mine = [(i, u) for i, u in enumerate(units) if i % num_tasks == task]
    done = skipped = 0
    for index, unit in mine:
        marker = unit_marker(ctx.stage_dir, index)
        if marker.exists():
            check_unit_marker(ctx, marker, unit, fingerprint)
            skipped += 1
            continue
        if ctx.should_stop():
            raise Preempted(f"stopping before unit {index} ({unit})")
        t0 = time.time()
        try:
            stats = module.process_unit(ctx, index, unit)
        except StageFailed as e:
            log.error("unit %d (%s) failed", index, unit)
            e.stats = {"unit": str(unit), "index": index, "stats": getattr(e, "stats", None) or {}}
            raise
        stats = dict(stats)
        stats.setdefault("seconds", round(time.time() - t0, 3))
        write_json(marker, {"unit": str(unit), "index": index, "fingerprint": fingerprint, "stats": stats})
        if done == 0:
            record_event(ctx.stage_dir, "first_unit", attempt=ctx.attempt, task=task, unit=index)
        done += 1
        log.info("unit %d/%d done (%s)", index + 1, len(units), unit)
    log.info("task %d/%d: %d units done, %d already done before", task, num_tasks, done, skipped)
    return {"units_done": done, "units_skipped": skipped}


def finalize_units(ctx: StageContext, module: Any, started: float) -> dict[str, Any]:
    """Merge every unit's stats (in unit order) and complete the stage."""
    units = list(module.units(ctx))
    freeze_units(ctx, module, units)
    fingerprint = stage_fingerprint(ctx.cfg, ctx.stage)
    missing = [i for i in range(len(units)) if not unit_marker(ctx.stage_dir, i).exists()]
    if missing:
        raise StageFailed(f"stage {ctx.stage}: {len(missing)} of {len(units)} units are not complete: {missing[:10]}")
    stats: dict[str, Any] = {"units": len(units)}
    for i, unit in enumerate(units):
        check_unit_marker(ctx, unit_marker(ctx.stage_dir, i), unit, fingerprint)
        stats = merge_stats(stats, read_json(unit_marker(ctx.stage_dir, i))["stats"])
    try:
        if hasattr(module, "finalize"):
            stats = module.finalize(ctx, stats)
        return complete_stage(ctx, stats, started)
    except StageFailed as e:
        e.stats = e.stats or stats
        raise


def run_stage(
    cfg: RunConfig,
    stage: str,
    task: int | None = None,
    num_tasks: int | None = None,
    finalize: bool = False,
) -> int:
    """Run (a part of) one stage here. Returns an exit code: 0 done, 75 requeue, 1 failed."""
    spec = STAGES[stage]
    rank, world, local, comm = _distributed_identity(spec.kind)
    if spec.kind == "array" and task is not None:
        rank, world = task, num_tasks or 1
    setup_logging(rank, quiet=spec.kind in ("mpi", "torch") and rank != 0)
    flag = stage_flag()
    stage_dir = cfg.run_dir / stage
    changed = check_recorded(cfg, stage, stage_dir)
    if changed:
        log.error("%s", changed)
        return 1
    if (stage_dir / DONE_MARKER).exists():
        log.info("stage %s is already complete (%s); nothing to do", stage, stage_dir)
        return 0
    reads = spec.reads_for(cfg)
    for needed in reads:
        if not is_done(cfg, needed):
            log.error("stage %s needs stage %s, which is not complete in %s", stage, needed, cfg.run_dir)
            return 1
        upstream_changed = check_recorded(cfg, needed, cfg.run_dir / needed)
        if upstream_changed:
            log.error("stage %s reads stage %s: %s", stage, needed, upstream_changed)
            return 1
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_start_record(cfg, stage, stage_dir)
    module = spec.load()
    started = time.time()
    logs_tracker = spec.kind != "array" or finalize or task is None
    tracker = open_tracker(cfg, stage, stage_dir, rank if logs_tracker else 1)
    ctx = StageContext(cfg=cfg, stage=stage, rank=rank, world_size=world, local_rank=local, tracker=tracker,
                       flag=flag, comm=comm, input_dirs={name: cfg.run_dir / name for name in reads})
    if rank == 0:
        write_text(stage_dir / "config.json", dump_json(cfg))
    events = rank == 0 or spec.kind == "array"  # one line per job (per array task), not per rank
    where = {"task": task} if spec.kind == "array" and not finalize else {"task": "finalize" if finalize else None}
    if events:
        record_event(stage_dir, "start", attempt=ctx.attempt, kind=spec.kind, **where)
    code = 0
    try:
        if spec.kind == "array":
            if not finalize:
                run_units(ctx, module, task or 0, num_tasks or 1)
            if finalize or task is None:
                finalize_units(ctx, module, started)
        else:
            stats = module.run(ctx)
            if rank == 0:
                complete_stage(ctx, stats or {}, started)
    except Preempted as e:
        log.warning("stage %s preempted (%s); state saved", stage, e)
        if events:
            record_event(stage_dir, "saved", attempt=ctx.attempt, where=str(e), signal_time=flag.time, **where)
        code = requeue_or_exit(stage, str(e), cfg.resources_for(stage).max_requeues)
        if events:
            record_event(stage_dir, "requeued" if code == REQUEUE_EXIT_CODE else "requeue_refused",
                         attempt=ctx.attempt, **where)
    except StageChanged as e:
        log.error("%s", e)
        code = 1
    except StageFailed as e:
        log.error("%s", e)
        write_failed_stats(stage_dir, e, e.stats)
        code = 1
    except BaseException:
        code = 1
        raise
    finally:
        tracker.finish(exit_code=code)
        if events:
            record_event(stage_dir, "end", attempt=ctx.attempt, code=code, **where)
    return code
