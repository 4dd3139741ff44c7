"""The comparison of an ablation: every variant's scores against the baseline's, with standard errors.

Each score (bits per byte of a held-out set, accuracy of a task) comes with its standard error ``se``. The
difference ``d = variant - baseline`` has the standard error ``sqrt(se_v² + se_b²)`` (the two taken as
independent; scored on the same items, their errors are positively correlated, so this overstates the error
of ``d`` and the test is conservative). A difference *exceeds its standard error* when ``|d| > se_d``.

Where both variants' per-item figures are at hand (same documents, same items), the paired standard error of ``d``
(:func:`lmhpc.ablate.scoring.paired_stderr`: the spread of the per-item differences) is given too, with its own
verdict ``exceeds_paired``: the sharper test, since the items' own variation cancels out.
"""

from __future__ import annotations

import math
from typing import Any

from lmhpc.ablate.scoring import paired_stderr
from lmhpc.ablate.variants import BASELINE, Variant
from lmhpc.evaluate.results import cell, columns


def metric_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The scores compared: bits per byte of each perplexity set and each task metric (the columns that carry a
    standard error), in the evaluate table's order."""
    return [c for c in columns(rows) if not c.endswith(" ppl")]


def lower_is_better(metric: str) -> bool:
    return metric.endswith(" bpb")


def exceeds(diff: float, stderr: float) -> bool:
    """``|diff| > stderr``, where a difference equal to its error (one item of n changed, up to rounding) does not
    count."""
    return abs(diff) > stderr * (1 + 1e-9)


def difference(value: float | None, stderr: float | None, base: float | None, base_stderr: float | None
               ) -> dict[str, Any]:
    """``diff``, its standard error and whether it exceeds it (None where a figure is missing)."""
    if value is None or base is None:
        return {"diff": None, "diff_stderr": None, "exceeds": None}
    diff = value - base
    if stderr is None or base_stderr is None:
        return {"diff": diff, "diff_stderr": None, "exceeds": None}
    se = math.sqrt(stderr**2 + base_stderr**2)
    return {"diff": diff, "diff_stderr": se, "exceeds": exceeds(diff, se)}


def compare(variants: list[Variant], rows: list[dict[str, Any]], data: dict[str, dict[str, Any]],
            setup: dict[str, Any], items: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The comparison document: per variant, its data, each metric's value, stderr and difference to the
    baseline; ``exceeding`` lists the differences larger than their (combined) standard error,
    ``exceeding_paired`` those larger than their paired one (``items``: per-item figures by variant)."""
    by_name = {row["name"]: row for row in rows}
    if BASELINE not in by_name:
        raise ValueError("the comparison needs the baseline's scores")
    metrics = metric_columns(rows)
    base = by_name[BASELINE]
    out_variants, exceeding, exceeding_paired = [], [], []
    items = items or {}
    for variant in variants:
        row = by_name[variant.name]
        scores = {}
        for metric in metrics:
            value, stderr = cell(row, metric)
            entry = {"value": value, "stderr": stderr}
            if variant.name != BASELINE:
                entry.update(difference(value, stderr, *cell(base, metric)))
                paired = None
                if variant.name in items and BASELINE in items and entry["diff"] is not None:
                    paired = paired_stderr(metric, items[variant.name], items[BASELINE])
                entry["paired_stderr"] = paired
                entry["exceeds_paired"] = None if paired is None else exceeds(entry["diff"], paired)
                if entry["diff"] is not None:
                    better = (entry["diff"] < 0) == lower_is_better(metric)
                    entry["direction"] = "better" if better else "worse"
                found = {"variant": variant.name, "metric": metric, "diff": entry["diff"],
                         "diff_stderr": entry["diff_stderr"], "paired_stderr": paired,
                         "direction": entry.get("direction")}
                if entry["exceeds"]:
                    exceeding.append(found)
                if entry["exceeds_paired"]:
                    exceeding_paired.append(found)
            scores[metric] = entry
        info = data.get(variant.name, {})
        out_variants.append({
            "name": variant.name, "kind": variant.kind, "description": variant.description,
            "docs": info.get("docs"), "tokens": info.get("tokens"), "epochs": info.get("epochs"),
            "final_loss": info.get("final_loss"), "sources": info.get("sources", {}),
            "curate": info.get("curate"), "dedup": info.get("dedup"), "seconds": info.get("seconds", {}),
            "scores": scores,
        })
    return {"baseline": BASELINE, "metrics": [{"name": m, "lower_is_better": lower_is_better(m)} for m in metrics],
            "variants": out_variants, "exceeding": exceeding, "exceeding_paired": exceeding_paired, "setup": setup,
            "method": "diff = variant - baseline; diff_stderr = sqrt(stderr_variant^2 + stderr_baseline^2); "
                      "exceeds: |diff| > diff_stderr; paired_stderr: standard error of the per-item differences "
                      "(same documents and items); exceeds_paired: |diff| > paired_stderr"}


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def format_score(entry: dict[str, Any]) -> str:
    """``value ± se`` and, for a variant, ``(Δ diff ± se, paired ± se)`` with a ``*`` when the difference exceeds
    its combined standard error, a ``†`` when it exceeds only its paired one."""
    text = _num(entry.get("value"))
    if entry.get("stderr") is not None:
        text += f" ± {entry['stderr']:.4f}"
    if entry.get("diff") is not None:
        delta = f"Δ {entry['diff']:+.4f}"
        if entry.get("diff_stderr") is not None:
            delta += f" ± {entry['diff_stderr']:.4f}"
        if entry.get("paired_stderr") is not None:
            delta += f", paired ± {entry['paired_stderr']:.4f}"
        mark = " *" if entry.get("exceeds") else " †" if entry.get("exceeds_paired") else ""
        text += f" ({delta}{mark})"
    return text


def markdown(comparison: dict[str, Any]) -> str:
    """``comparison.md``: variants × metrics; ``*`` marks a difference to the baseline beyond its standard error."""
    metrics = [m["name"] for m in comparison["metrics"]]
    lines = ["| variant | tokens | final loss | " + " | ".join(metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    for v in comparison["variants"]:
        loss = "–" if v.get("final_loss") is None else f"{v['final_loss']:.4f}"
        lines.append(f"| {v['name']} | {v.get('tokens') or 0} | {loss} | "
                     + " | ".join(format_score(v["scores"][m]) for m in metrics) + " |")
    lines += ["", f"Δ: variant - baseline ± the combined standard error, and ± the paired one (per-item "
                  f"differences); * where |Δ| exceeds the combined error, † where it exceeds only the paired one "
                  f"(bpb: lower is better). Probe: {comparison['setup'].get('steps')} steps, "
                  f"{comparison['setup'].get('token_budget')} tokens, seed {comparison['setup'].get('seed')}."]
    for key, title in (("exceeding", "combined"), ("exceeding_paired", "paired")):
        found = comparison.get(key, [])
        if not found:
            lines += ["", f"No difference exceeds its {title} standard error."]
            continue
        lines += ["", f"Differences beyond one {title} standard error:"]
        for d in found:
            se = d["diff_stderr"] if key == "exceeding" else d["paired_stderr"]
            lines.append(f"- {d['variant']}: {d['metric']} {d['diff']:+.4f} ± {se:.4f} ({d['direction']})")
    return "\n".join(lines) + "\n"
