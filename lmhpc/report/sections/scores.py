"""Quality scores per filter, each drawn with the threshold that decides on it.

Scores come from ``metadata.scores`` of the sampled documents (``curate.write_scores``) and from the scores
kept with each sampled drop. Per score: the documents that passed the filter against those it dropped, the
global threshold as a solid line and a source's own threshold (a ``per_source`` override) as a dashed one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lmhpc.curate.filters.config import FILTER_ORDER
from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import CURATE_DROP, DocRecord
from lmhpc.report.thresholds import bounds, filters_for, log_scale

COLS = 4
PASSED, DROPPED = "passed the filter", "dropped by it (any rule)"


def _values(docs: list[DocRecord], name: str) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """score → group → [(source, value)] for one filter."""
    out: dict[str, dict[str, list[tuple[str, float]]]] = defaultdict(lambda: {PASSED: [], DROPPED: []})
    for d in docs:
        scores = d.scores.get(name)
        if not isinstance(scores, dict):
            continue
        group = DROPPED if d.status == CURATE_DROP and (d.reason or "").startswith(f"{name}/") else PASSED
        for score, value in scores.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
                out[score][group].append((d.source, float(value)))
    return out


def _vacuous(side: str, value: float) -> bool:
    """A minimum of 0 on a score that cannot be negative drops nothing (e.g. language.min_score's default)."""
    return side == "min" and value <= 0


def _lines(filters: dict, name: str, score: str, sources: list[str]) -> list[tuple[float, str, bool]]:
    """(value, label, is global) of every bound on the score: the global ones, then each source's own."""
    lines: list[tuple[float, str, bool]] = []
    glob = bounds(filters, name, score)
    for _, side, value in glob:
        if not _vacuous(side, value):
            lines.append((value, f"{side} {value:g}", True))
    for source in sources:
        own = bounds(filters_for(filters, source), name, score)
        for setting, side, value in own:
            if (setting, side, value) not in glob and not _vacuous(side, value):
                lines.append((value, f"{source}: {side} {value:g}", False))
    return lines


def _filter_chart(name: str, values: dict, filters: dict, sources: list[str]) -> charts.Chart | None:
    plotted = []
    for score in values:  # in the order the filter measures them
        lines = _lines(filters, name, score, sources)
        if lines:
            plotted.append((score, lines))
    if not plotted:
        return None
    cols = min(COLS, len(plotted))
    rows = (len(plotted) + cols - 1) // cols
    fig, axes = charts.figure(3.2 * cols, 2.3 * rows, rows, cols)
    colors = charts.color_for([PASSED, DROPPED])
    colors[DROPPED] = charts.STATUS_COLORS[CURATE_DROP]
    counts = {PASSED: 0, DROPPED: 0}
    for i, (score, lines) in enumerate(plotted):
        ax = axes[i // cols, i % cols]
        groups = {g: [v for _, v in values[score][g]] for g in (PASSED, DROPPED) if values[score][g]}
        for g, v in groups.items():
            counts[g] = max(counts[g], len(v))
        every = [x for v in groups.values() for x in v]
        log = log_scale(name, score) and any(x > 0 for x in every)
        if log:
            floor = min(x for x in every if x > 0)
            groups = {g: [max(x, floor) for x in v] for g, v in groups.items()}
            bins = charts.log_bins([*every, *(v for v, _, _ in lines if v > 0)], 30)
            ax.set_xscale("log")
        else:
            bins = charts.lin_bins(every, [v for v, _, _ in lines])
        charts.histogram(ax, groups, bins, colors)
        for value, label, is_global in lines:
            ax.axvline(value, color="black", linestyle="-" if is_global else "--", linewidth=1.1, label=label)
        ax.set_title(score)
        ax.set_ylabel("% of the group" if i % cols == 0 else "")
        ax.legend(fontsize=6.5, loc="best")
    for j in range(len(plotted), rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return charts.render(fig, f"scores-{name}", f"{name}: scores and thresholds",
                         f"sampled documents: up to {counts[PASSED]:,} that passed, {counts[DROPPED]:,} it dropped "
                         "(counts in each legend), each group summing to 100%; solid line: the threshold, dashed: a "
                         "source's own threshold", wide=cols > 2)


def render(rin: ReportInput) -> html.Section | None:
    docs = rin.samples.all
    filters = rin.section("curate").get("filters") or {}
    if not docs or not isinstance(filters, dict):
        return None
    sources = sorted({d.source for d in docs})
    names = [n for n in FILTER_ORDER if any(isinstance(d.scores.get(n), dict) for d in docs)]
    chart_list = [c for n in names if (c := _filter_chart(n, _values(docs, n), filters, sources))]
    if not chart_list:
        return None
    body = [html.note("Scores are measured by the filters and stored with each document (curate.write_scores); a "
                      "filter stops measuring at the first rule a document fails, so later scores of dropped "
                      "documents can be missing. Drops are those on disk: "
                      f"{rin.samples.dropped_note}."), html.grid(chart_list)]
    return html.Section("scores", "Quality scores and thresholds", "".join(body), chart_list)
