"""The comparison table: one row per evaluated model (checkpoint, stage or file), one column per score.

Written as ``results.json`` (every figure, standard errors, skips, the data's licenses), ``results.md`` (the
markdown table) and logged to W&B as a table through the stage's tracker.
"""

from __future__ import annotations

from typing import Any

from lmhpc.track import Tracker


def columns(models: list[dict[str, Any]]) -> list[str]:
    """The table's score columns, in a stable order: perplexity sets, then tasks."""
    ppl: list[str] = []
    tasks: list[str] = []
    for row in models:
        for name in row.get("perplexity", {}):
            if f"{name} bpb" not in ppl:
                ppl += [f"{name} bpb", f"{name} ppl"]
        for name, result in row.get("tasks", {}).items():
            for metric in result.get("metrics", ["acc", "acc_norm"]):
                column = f"{name} {metric}"
                if column not in tasks:
                    tasks.append(column)
    return ppl + tasks


def cell(row: dict[str, Any], column: str) -> tuple[float | None, float | None]:
    """(value, standard error) of one column of one model's row."""
    name, metric = column.rsplit(" ", 1)
    if metric in ("bpb", "ppl"):
        result = row.get("perplexity", {}).get(name, {})
        if metric == "bpb":
            return result.get("bits_per_byte"), result.get("bits_per_byte_stderr")
        return result.get("perplexity"), None
    result = row.get("tasks", {}).get(name, {})
    return result.get(metric), result.get(f"{metric}_stderr")


def _fmt(value: float | None, stderr: float | None) -> str:
    if value is None:
        return "–"
    text = f"{value:.4f}" if value < 100 else f"{value:.1f}"
    return f"{text} ± {stderr:.4f}" if stderr is not None else text


def markdown_table(models: list[dict[str, Any]]) -> str:
    """Models as rows, scores (± standard error) as columns."""
    cols = columns(models)
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in models:
        lines.append(f"| {row['name']} | " + " | ".join(_fmt(*cell(row, c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def log_table(tracker: Tracker, models: list[dict[str, Any]], step: int) -> None:
    """The table as a W&B table (where the tracker is a W&B run), and each model's scores as metrics."""
    cols = columns(models)
    for i, row in enumerate(models):
        tracker.log({"eval": {c.replace(" ", "/"): cell(row, c)[0] for c in cols if cell(row, c)[0] is not None}},
                    step=step + i)
    run = getattr(tracker, "run", None)
    if run is None:
        return
    import wandb

    data = []
    for row in models:
        values = []
        for c in cols:
            value, stderr = cell(row, c)
            values += [value, stderr]
        data.append([row["name"], *values])
    header = ["model"] + [name for c in cols for name in (c, f"{c} stderr")]
    run.log({"results": wandb.Table(columns=header, data=data)}, step=step + len(models))
