"""Weights & Biases tracking: one W&B run per stage, grouped by run name, one id across requeues.

- ``WANDB_MODE`` is offline unless the config or the environment says otherwise.
- The run id is derived from the run folder and stage and stored in ``<stage>/wandb_state.json``,
  so a requeued attempt logs to the same run (``resume="allow"`` when online).
- Offline runs cannot be resumed by W&B, so each attempt writes its own offline folder, recorded in
  the state file, and steps an earlier attempt already logged are not logged again. ``lmhpc sync``
  then uploads the attempts in order under the one id, without duplicated steps.
- An attempt killed without a save (``scontrol requeue``, a node lost, ``kill -9``) never wrote its last
  rows: W&B commits a step's row only when a later step is logged, and its writer had not flushed. The
  next attempt reads how far the earlier attempts' ``.wandb`` files really go, and logs the steps between
  that and where it resumes from the stage's ``metrics.jsonl`` (the rows the checkpoint's run had, bitwise
  the same losses) before its own first step; the state file records them as ``backfilled``.
- Only rank 0 logs; ``step=`` is always explicit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmhpc.fsutil import read_json, write_json

log = logging.getLogger(__name__)

STATE_FILE = "wandb_state.json"


class Tracker:
    """Logs metrics of one stage. The base class logs nothing (other ranks, or W&B disabled)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log ``metrics`` at ``step``."""

    def summary(self, values: dict[str, Any]) -> None:
        """Set final values of the stage (its stats)."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run."""


def run_id_for(run_dir: Path, run_name: str, stage: str) -> str:
    """A W&B run id that is the same for every attempt of this stage of this run folder."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", f"{run_name}-{stage}")
    return f"{safe}-{digest}"[:64]


def flatten(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become ``a/b`` keys; non-numeric leaves are dropped from time series."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = v
    return out


class WandbTracker(Tracker):
    """A real ``wandb`` run for one stage, one attempt."""

    def __init__(
        self,
        stage_dir: Path,
        run_id: str,
        project: str,
        group: str,
        job_type: str,
        mode: str,
        config: dict[str, Any],
        entity: str | None = None,
        tags: list[str] | None = None,
        backfill: Path | None = None,
    ) -> None:
        import wandb

        self.state_path = Path(stage_dir) / STATE_FILE
        state = read_json(self.state_path, default=None) or {"run_id": run_id, "attempts": [], "last_step": -1}
        self.state = state
        self.logged_before = int(state.get("last_step", -1))
        self.backfill: Path | None = None
        if mode == "offline" and state["attempts"]:
            written = last_written_step(stage_dir)
            if written < self.logged_before:
                log.warning("W&B: the earlier attempts' offline logs end at step %d, not %d (killed before W&B "
                            "wrote them); the steps up to where this attempt resumes come from %s",
                            written, self.logged_before, backfill)
                self.logged_before = written
                self.backfill = backfill
        attempt = len(state["attempts"])
        attempt_dir = Path(stage_dir) / "wandb" / f"attempt-{attempt:03d}"
        attempt_dir.mkdir(parents=True, exist_ok=True)
        self.attempt_dir, self.mode = attempt_dir, mode
        state["attempts"].append(
            {
                "dir": str(attempt_dir.relative_to(stage_dir)),
                "mode": mode,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "resumes_after_step": self.logged_before,
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT"),
            }
        )
        write_json(self.state_path, state)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            group=group,
            job_type=job_type,
            id=state["run_id"],
            resume="allow" if mode == "online" else None,
            mode=mode,
            dir=str(attempt_dir),
            config=config,
            tags=tags or None,
            settings=settings,
            reinit="create_new",
        )
        self.last_step = self.logged_before

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if step <= self.logged_before:
            return  # an earlier attempt logged this step already
        if self.backfill is not None:
            self._backfill(self.backfill, step)
        flat = flatten(metrics)
        if not flat:
            return
        self.run.log(flat, step=step)
        if step > self.last_step:
            self.last_step = step
            self.state["last_step"] = step
            write_json(self.state_path, self.state, fsync=False)

    def _backfill(self, path: Path, before: int) -> None:
        """Log the rows of ``path`` (``metrics.jsonl``) after the steps W&B has and before ``before``."""
        self.backfill = None
        rows = []
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                row = json.loads(line) if line.strip() else None
                if row and self.logged_before < int(row["step"]) < before:
                    rows.append(row)
        rows.sort(key=lambda r: int(r["step"]))
        for row in rows:
            self.run.log(flatten(row), step=int(row["step"]))
        if rows:
            self.state["attempts"][-1]["backfilled"] = [int(rows[0]["step"]), int(rows[-1]["step"]), len(rows)]
            log.info("W&B: logged steps %d..%d again from %s", rows[0]["step"], rows[-1]["step"], path)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in flatten(values).items():
            self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)
        if self.mode == "offline":
            wait_until_written(self.attempt_dir)



def open_tracker(cfg: Any, stage: str, stage_dir: Path, rank: int) -> Tracker:
    """The tracker for a stage on this rank: W&B on rank 0 unless disabled, else a silent one."""
    from lmhpc.config import to_dict

    mode = os.environ.get("WANDB_MODE") or cfg.wandb.mode
    if rank != 0 or mode == "disabled":
        return Tracker()
    os.environ.setdefault("WANDB_MODE", mode)
    os.environ.setdefault("WANDB_SILENT", "true")
    run_id = run_id_for(cfg.run_dir, cfg.run.name, stage)
    return WandbTracker(
        stage_dir=stage_dir,
        run_id=run_id,
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.run.name,
        job_type=stage,
        mode=mode,
        config=to_dict(cfg),
        tags=cfg.wandb.tags,
        backfill=stage_dir / "metrics.jsonl",
    )


# --------------------------------------------------------------------------------------------
# offline runs: find, read back, sync


def offline_run_dirs(stage_dir: Path) -> list[Path]:
    """Every attempt's offline run folder of a stage, in attempt order."""
    state = read_json(Path(stage_dir) / STATE_FILE, default=None)
    if not state:
        return []
    out = []
    for attempt in state["attempts"]:
        base = Path(stage_dir) / attempt["dir"] / "wandb"
        out.extend(sorted(base.glob("offline-run-*")))
    return out


def last_written_step(stage_dir: Path) -> int:
    """The last ``_step`` the earlier attempts' ``.wandb`` files hold (-1 if none): what W&B really has."""
    last = -1
    for d in offline_run_dirs(stage_dir):
        try:
            rows = read_history(d)
        except (OSError, ValueError):  # killed before its log existed, or a torn record
            continue
        last = max([last, *(int(r["_step"]) for r in rows if "_step" in r)])
    return last


_HEADER = struct.Struct("<4sHB")  # ident ":W&B", magic 0xBEE1, version 0
_REC = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32768


def _records(path: Path) -> Iterator[bytes]:
    """Payloads of a ``.wandb`` transaction log: a 7-byte W&B header, then LevelDB-log framing in
    32 KiB blocks. W&B's Go writer counts blocks from the end of the header, its older Python writer
    from the start of the file: the framing that parses cleanly is used."""
    data = Path(path).read_bytes()
    ident, magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log")
    try:
        return iter(list(_framed(data, _HEADER.size)))
    except ValueError:
        return iter(list(_framed(data, 0)))


def _framed(data: bytes, base: int) -> Iterator[bytes]:
    pos, parts = _HEADER.size, []
    while pos + _REC.size <= len(data):
        left_in_block = _BLOCK - ((pos - base) % _BLOCK)
        if left_in_block < _REC.size:
            pos += left_in_block  # block trailer
            continue
        crc, length, kind = _REC.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left_in_block  # zero padding up to the next block
            continue
        chunk = data[pos + _REC.size : pos + _REC.size + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            if pos + _REC.size + length >= len(data):
                return  # the last record is still being written
            raise ValueError(f"corrupt record at byte {pos}")
        pos += _REC.size + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            parts = [chunk]
        elif kind == 3:  # MIDDLE
            parts.append(chunk)
        elif kind == 4:  # LAST
            parts.append(chunk)
            yield b"".join(parts)
            parts = []


def _record_kinds(path: Path) -> list[str]:
    from wandb.proto import wandb_internal_pb2 as pb

    kinds = []
    for payload in _records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kinds.append(rec.WhichOneof("record_type"))
    return kinds


def wait_until_written(attempt_dir: Path, timeout: float = 30.0) -> bool:
    """Wait until the attempt's offline transaction log ends with its exit record: W&B's writer
    process can still be flushing when ``finish()`` returns."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in Path(attempt_dir).glob("wandb/offline-run-*/*.wandb"):
            try:
                if "exit" in _record_kinds(path):
                    return True
            except Exception:  # noqa: BLE001 - a log still being written may not parse yet
                pass
        time.sleep(0.1)
    log.warning("W&B offline log in %s has no exit record after %.0fs", attempt_dir, timeout)
    return False


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The logged rows (``_step`` and metrics) of one offline run folder, read from its ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    rows = []
    for payload in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        if rec.history.HasField("step"):
            row.setdefault("_step", rec.history.step.num)
        rows.append(row)
    return rows


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """Run id, group, job type and config of an offline run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_dir).glob("*.wandb"))
    info: dict[str, Any] = {"config": {}}
    for payload in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(run_id=rec.run.run_id, group=rec.run.run_group, job_type=rec.run.job_type,
                        project=rec.run.project)
            for item in rec.run.config.update:
                info["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                info["config"][item.key] = json.loads(item.value_json)
    return info


def sync_commands(run_dir: Path, project: str | None = None, entity: str | None = None) -> list[list[str]]:
    """One ``wandb sync --id`` command per stage, naming its attempts' folders in order."""
    cmds = []
    for state_path in sorted(Path(run_dir).glob(f"*/{STATE_FILE}")):
        stage_dir = state_path.parent
        dirs = offline_run_dirs(stage_dir)
        if not dirs:
            continue
        state = read_json(state_path)
        cmd = [str(Path(sys.executable).parent / "wandb"), "sync", "--id", state["run_id"], "--include-synced"]
        if project:
            cmd += ["--project", project]
        if entity:
            cmd += ["--entity", entity]
        cmds.append(cmd + [str(d) for d in dirs])
    return cmds


def sync(run_dir: Path, project: str | None = None, entity: str | None = None, dry_run: bool = False) -> int:
    """Upload every stage's offline attempts of a run folder; returns the number of failed uploads."""
    failures = 0
    for cmd in sync_commands(run_dir, project, entity):
        print(" ".join(["wandb", *cmd[1:]]))
        if dry_run:
            continue
        if subprocess.run(cmd).returncode != 0:
            failures += 1
    return failures
