"""The evaluate stage's ``results.json`` read defensively into one table: models (checkpoints or stages) ×
scores, each score a value with its standard error where one was computed.

Expected shape: ``{"models": [{"name", "perplexity": {set: {"perplexity", "bits_per_byte",
"bits_per_byte_stderr"}}, "tasks": {task: {"metrics": [...], metric: value, metric + "_stderr": value}}}]}``;
rows or fields of another shape are skipped, never raised on.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmhpc.report.run import as_dict, read_json

STEP = re.compile(r"step[-_]?(\d+)")


@dataclass
class Score:
    value: float
    stderr: float | None = None


@dataclass
class Results:
    """Rows (model names, in file order), columns (score names) and the cells that exist."""

    models: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Score] = field(default_factory=dict)

    def steps(self) -> list[int] | None:
        """The training step of each model when every name carries one (``pretrain/step-100``), else None."""
        found = [STEP.search(m) for m in self.models]
        return [int(f.group(1)) for f in found] if found and all(found) else None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_results(path: Path) -> Results:
    """The table in ``path`` (empty when the file is missing or of another shape)."""
    data = read_json(path)
    rows = data.get("models") if isinstance(data, dict) else data
    out = Results()
    for i, row in enumerate(rows if isinstance(rows, list) else []):
        if not isinstance(row, dict):
            continue
        name = str(row.get("name") or f"model {i}")
        if name in out.models:
            name = f"{name} ({i})"
        out.models.append(name)
        for set_name, result in as_dict(row.get("perplexity")).items():
            result = as_dict(result)
            for metric, err in (("bits_per_byte", "bits_per_byte_stderr"), ("perplexity", None)):
                value = _number(result.get(metric))
                if value is not None:
                    _add(out, name, f"{set_name} {metric.replace('_', ' ')}", value,
                         _number(result.get(err)) if err else None)
        for task, result in as_dict(row.get("tasks")).items():
            result = as_dict(result)
            metrics = result.get("metrics")
            names = metrics if isinstance(metrics, list) else [k for k in result if _number(result.get(k)) is not None
                                                                and not k.endswith("_stderr")]
            for metric in names:
                value = _number(result.get(metric))
                if isinstance(metric, str) and value is not None:
                    _add(out, name, f"{task} {metric}", value, _number(result.get(f"{metric}_stderr")))
    return out


def _add(out: Results, model: str, column: str, value: float, stderr: float | None) -> None:
    if column not in out.columns:
        out.columns.append(column)
    out.cells[(model, column)] = Score(value, stderr)
