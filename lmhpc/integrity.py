"""What a stage's outputs were built from, so that a rerun never mixes old and new work.

- **Fingerprint**: a hash of the stage's resolved config section (minus the keys its config class lists
  in ``fingerprint_ignore``, which do not change outputs), the run's seed, and the fingerprints of the
  stages it reads. It is recorded in the stage's start record (``_stage.json``), in every unit marker and
  in ``DONE``. A rerun under another config stops with the keys that changed, and a complete stage whose
  config changed is not "already complete".
- **Frozen unit list**: the first start of an array stage writes its units (and the size and
  modification time of each unit's input file) to ``_units.json``; every later start and the
  finalize step compare and stop, naming the files added, removed or changed.

``lmhpc run ... --restart STAGE`` removes a stage's outputs (and those of the stages that read it) to
start it over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmhpc.fsutil import read_json, write_json

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

START_RECORD = "_stage.json"
UNITS_DIR = "_units"
FROZEN_UNITS = "_units.json"  # beside the _units/ markers


class StageChanged(RuntimeError):
    """A stage's recorded config or inputs differ from the current ones."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out if out or not prefix else {prefix: {}}
    if isinstance(data, float) and data.is_integer():
        data = int(data)  # 100 and 100.0 are one value (a YAML int given for a float key, or a default)
    if isinstance(data, tuple):
        data = list(data)
    return {prefix: data}


def section_view(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """The parts of the config that decide a stage's output, as dotted keys."""
    from lmhpc.config import to_dict

    section = cfg.section(stage)
    ignore = tuple(getattr(type(section), "fingerprint_ignore", ()))
    flat = _flatten(to_dict(section, redact=False), stage)
    view = {k: v for k, v in flat.items() if not any(k == f"{stage}.{i}" or k.startswith(f"{stage}.{i}.")
                                                        for i in ignore)}
    view["run.seed"] = cfg.run.seed
    return view


def config_record(cfg: RunConfig, stage: str) -> dict[str, dict[str, Any]]:
    """The config views of a stage and of every stage it reads, directly or not: ``{stage: view}``."""
    from lmhpc.stages import STAGES

    record: dict[str, dict[str, Any]] = {}

    def visit(name: str) -> None:
        if name in record:
            return
        record[name] = section_view(cfg, name)
        for needed in STAGES[name].reads_for(cfg):
            visit(needed)

    visit(stage)
    return record


def fingerprint_of(record: dict[str, dict[str, Any]]) -> str:
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    """The fingerprint of a stage under this config (its section, the seed, and what it reads)."""
    return fingerprint_of(config_record(cfg, stage))


def describe_changes(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]], limit: int = 12) -> str:
    """``key: old -> new`` for every key that differs between two config records."""
    changes = []
    for stage in sorted(set(old) | set(new)):
        a, b = old.get(stage, {}), new.get(stage, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<unset>") != b.get(key, "<unset>"):
                changes.append(f"{key}: {json.dumps(a.get(key, '<unset>'), default=str)} -> "
                               f"{json.dumps(b.get(key, '<unset>'), default=str)}")
    if not changes:
        return "the recorded fingerprint differs (recorded by another version of lmhpc)"
    more = f" (and {len(changes) - limit} more)" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


def recorded(stage_dir: Path) -> dict[str, Any] | None:
    """The start record of a stage folder, if it was started."""
    return read_json(Path(stage_dir) / START_RECORD, default=None)


def restart_hint(stage: str) -> str:
    return f"to start it over, rerun with --restart {stage} (removes its outputs and those of the stages reading it)"


def check_recorded(cfg: RunConfig, stage: str, stage_dir: Path) -> str | None:
    """A message naming what changed when the stage folder was started under another config, else None."""
    rec = recorded(stage_dir)
    if rec is None or "fingerprint" not in rec:
        done = read_json(Path(stage_dir) / "DONE", default=None)
        if not done or "fingerprint" not in done:
            return None  # never started, or written before fingerprints were recorded
        rec = done
    current = config_record(cfg, stage)
    if rec["fingerprint"] == fingerprint_of(current):
        return None
    state = "is complete" if (Path(stage_dir) / "DONE").exists() else "was started"
    changes = describe_changes(rec.get("config", {}), current)
    return f"stage {stage} {state} in {stage_dir} under another config ({changes}); {restart_hint(stage)}"


def write_start_record(cfg: RunConfig, stage: str, stage_dir: Path) -> None:
    """Record the fingerprint and config a stage starts with (first start only; later starts compare)."""
    record = config_record(cfg, stage)
    create_once(Path(stage_dir) / START_RECORD, {"stage": stage, "fingerprint": fingerprint_of(record),
                                                 "config": record})


def create_once(path: Path, data: Any) -> bool:
    """Write ``data`` as JSON to ``path`` unless it exists, atomically even when several tasks race.
    Returns True when this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(tmp, data)
    try:
        os.link(tmp, path)  # fails if another task created it first
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------ units


def unit_entries(ctx: Any, module: Any, units: list[str]) -> list[dict[str, Any]]:
    """Each unit with the size and modification time of its input file (where the stage names one)."""
    unit_file = getattr(module, "unit_file", None)
    entries = []
    for unit in units:
        entry: dict[str, Any] = {"unit": str(unit)}
        path = unit_file(ctx, unit) if unit_file else None
        if path is not None:
            try:
                st = Path(path).stat()
                entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
            except OSError:
                entry.update(size=None, mtime_ns=None)
        entries.append(entry)
    return entries


def compare_units(frozen: list[dict[str, Any]], now: list[dict[str, Any]]) -> str | None:
    """What differs between the frozen unit list and the current one, or None."""
    old = {e["unit"]: e for e in frozen}
    new = {e["unit"]: e for e in now}
    added = [u for u in new if u not in old]
    removed = [u for u in old if u not in new]
    changed = [u for u in new if u in old and new[u] != old[u]]
    moved = not (added or removed or changed) and [e["unit"] for e in frozen] != [e["unit"] for e in now]
    if not (added or removed or changed or moved):
        return None
    parts = []
    for label, items in (("added", added), ("removed", removed), ("changed (size or modification time)", changed)):
        if items:
            parts.append(f"{label}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)" if len(items) > 5 else ""))
    if moved:
        parts.append("the units are listed in another order")
    return "; ".join(parts)


def freeze_units(ctx: Any, module: Any, units: list[str]) -> None:
    """Freeze the unit list at the stage's first start; on later starts stop if the inputs changed."""
    path = Path(ctx.stage_dir) / FROZEN_UNITS
    now = unit_entries(ctx, module, units)
    create_once(path, {"units": now})
    frozen = read_json(path)["units"]
    diff = compare_units(frozen, now)
    if diff:
        raise StageChanged(
            f"stage {ctx.stage}: its inputs changed since it started ({diff}); the units already done were built "
            f"from the old list (frozen in {path}). {restart_hint(ctx.stage)}"
        )


# ------------------------------------------------------------------------------------------ restart


def remove_stage_outputs(stage_dir: Path) -> bool:
    """Remove a stage folder (its outputs, markers and records). Returns True if there was one."""
    stage_dir = Path(stage_dir)
    if not stage_dir.exists():
        return False
    trash = stage_dir.with_name(f".{stage_dir.name}.removing.{os.getpid()}")
    stage_dir.rename(trash)  # the stage is gone at once, even if removal is slow or interrupted
    shutil.rmtree(trash, ignore_errors=True)
    return True
