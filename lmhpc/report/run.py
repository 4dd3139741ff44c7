"""A run folder as the report reads it: each stage's files, read defensively.

A stage folder may be missing, incomplete or written by an older version; every reader here returns an
empty value instead of raising, so one damaged file hides one figure, never the page.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("lmhpc.report")

STAGES = ("curate", "dedup", "tokenizer", "tokenize", "pretrain", "evaluate")


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable (logged)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("cannot read %s: %s", path, e)
        return None


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a (plain) JSON-lines file; lines that are not objects are skipped."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if limit is not None and len(rows) >= limit:
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty one (stats written by other versions may differ)."""
    return value if isinstance(value, dict) else {}


def as_int(value: Any) -> int:
    """``value`` as an int (0 when it is not a number)."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass
class RunFolder:
    """``runs/<run>/``: the stages it holds, their stats and the resolved config."""

    path: Path
    _stats: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def has(self, stage: str) -> bool:
        """Whether the stage wrote anything the report can read (a complete stage or partial stats)."""
        d = self.stage_dir(stage)
        return d.is_dir() and any((d / name).exists() for name in ("DONE", "stats.json", "stats.failed.json"))

    def done(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "DONE").exists()

    def stats(self, stage: str) -> dict[str, Any]:
        """The stage's ``stats.json`` (or the partial stats of a failed attempt); ``{}`` when absent."""
        if stage not in self._stats:
            d = self.stage_dir(stage)
            stats = read_json(d / "stats.json")
            if stats is None:
                stats = read_json(d / "stats.failed.json")
            self._stats[stage] = as_dict(stats)
        return self._stats[stage]

    def config(self) -> dict[str, Any]:
        """The resolved run config as saved beside a stage (every stage saves the whole tree)."""
        for stage in STAGES:
            cfg = read_json(self.stage_dir(stage) / "config.json")
            if isinstance(cfg, dict):
                return cfg
        return {}

    def stages(self) -> list[str]:
        """The stages present, in chain order (stages unknown to the report follow, by name)."""
        present = [s for s in STAGES if self.has(s)]
        others = sorted(p.name for p in self.path.iterdir() if p.is_dir() and p.name not in STAGES
                        and p.name != "report" and self.has(p.name)) if self.path.is_dir() else []
        return present + others
