"""Orchestration timing: what every job of a stage did when, and the overhead of the chain around the work.

Each process that runs a stage appends events to ``<stage>/events.jsonl`` (one JSON line each, appended in one
write, so tasks of an array and requeued attempts share the file): ``start`` (attempt, job, task, host),
``first_unit`` (an array task's first finished unit), ``saved`` (a preemption: when the state was saved, and
when the signal had arrived), ``restored`` (a stage resumed from saved state: how long loading took),
``requeued`` and ``end`` (exit code).

:func:`timing_rows` turns them into the table ``lmhpc status RUN --timing`` prints: per stage, the time from
its dependency's end to its first start (queueing + scheduling), from its start to its first unit or step, its
run time, and per preemption the save, requeue (end of one attempt → start of the next) and restore times.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


def record_event(stage_dir: Path, event: str, **fields: Any) -> None:
    """Append one event (with its wall time, job and task) to the stage's events file."""
    line = {"event": event, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
            "job": os.environ.get("SLURM_JOB_ID"), "task": os.environ.get("SLURM_ARRAY_TASK_ID"), **fields}
    data = (json.dumps(line, default=str) + "\n").encode()
    stage_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(stage_dir / EVENTS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)  # one write of one line: appends from several processes do not interleave
    finally:
        os.close(fd)


def read_events(stage_dir: Path) -> list[dict[str, Any]]:
    path = Path(stage_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill -9 mid-write
    return sorted(out, key=lambda e: e["time"])


def _first_progress(stage_dir: Path, events: list[dict[str, Any]], start: float) -> float | None:
    units = [e["time"] for e in events if e["event"] == "first_unit"]
    if units:
        return min(units) - start
    metrics = stage_dir / "metrics.jsonl"
    if metrics.exists():  # a training stage: its first logged step
        return metrics.stat().st_ctime - start if metrics.stat().st_ctime >= start else None
    return None


def stage_timing(stage_dir: Path, previous_end: float | None) -> dict[str, Any]:
    """The timing row of one stage folder."""
    events = read_events(stage_dir)
    starts = [e for e in events if e["event"] == "start"]
    ends = [e for e in events if e["event"] == "end"]
    row: dict[str, Any] = {"stage": stage_dir.name, "attempts": len({(e.get("job"), e.get("task"), e.get("attempt"))
                                                                    for e in starts}),
                           "dependency_to_start_s": None, "start_to_first_unit_s": None, "run_s": None,
                           "preemptions": [], "end": None}
    if not starts:
        return row
    first = starts[0]["time"]
    if previous_end is not None:
        row["dependency_to_start_s"] = round(first - previous_end, 2)
    progress = _first_progress(stage_dir, events, first)
    row["start_to_first_unit_s"] = round(progress, 2) if progress is not None else None
    if ends:
        row["end"] = max(e["time"] for e in ends)
        row["run_s"] = round(row["end"] - first, 2)
    # one preemption: signal → saved (save), saved → requeued, requeued → next start of the same task (requeue),
    # restored (restore) in that next attempt
    by_task: dict[Any, list[dict[str, Any]]] = {}
    for e in events:
        by_task.setdefault(e.get("task"), []).append(e)
    for task, seq in by_task.items():
        for i, e in enumerate(seq):
            if e["event"] != "saved":
                continue
            signal_time = e.get("signal_time")
            requeued = next((s for s in seq[i:] if s["event"] in ("requeued", "end")), None)
            restart = next((s for s in seq[i:] if s["event"] == "start"), None)
            restored = next((s for s in seq[i:] if s["event"] == "restored"), None) if restart else None
            row["preemptions"].append({
                "task": task,
                "save_s": round(e["time"] - signal_time, 2) if signal_time else None,
                "requeue_s": round(restart["time"] - requeued["time"], 2) if restart and requeued else None,
                "restore_s": restored.get("seconds") if restored else None,
                "where": e.get("where"),
            })
    return row


def timing_rows(run_dir: Path, order: list[str]) -> list[dict[str, Any]]:
    """Timing rows of the stages in ``order`` (chain order: each depends on the one before)."""
    rows = []
    previous_end = None
    for stage in order:
        row = stage_timing(Path(run_dir) / stage, previous_end)
        rows.append(row)
        previous_end = row["end"] if row["end"] is not None else previous_end
    return rows


def format_timing(rows: list[dict[str, Any]]) -> str:
    def s(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'stage':<14} {'after dep s':>11} {'to 1st unit s':>13} {'run s':>8} {'attempts':>8} "
             f"{'preempt':>7} {'save s':>7} {'requeue s':>9} {'restore s':>9}"]
    def mean(pre: list[dict[str, Any]], key: str) -> float | None:
        vals = [p[key] for p in pre if p[key] is not None]
        return sum(vals) / len(vals) if vals else None

    for r in rows:
        pre = r["preemptions"]
        lines.append(f"{r['stage']:<14} {s(r['dependency_to_start_s']):>11} {s(r['start_to_first_unit_s']):>13} "
                     f"{s(r['run_s']):>8} {r['attempts']:>8} {len(pre):>7} {s(mean(pre, 'save_s')):>7} "
                     f"{s(mean(pre, 'requeue_s')):>9} {s(mean(pre, 'restore_s')):>9}")
    return "\n".join(lines)
