"""Charts for the report, drawn with matplotlib and embedded in the page as data URIs.

Figures are made with :class:`matplotlib.figure.Figure` directly (no pyplot, no global backend), saved as SVG
(text kept as text, drawn by the browser: small and quick to write) or, for dense scatters, PNG. Output is
deterministic: no dates in the metadata, a fixed hash salt for SVG ids.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from lmhpc.report.docs import CURATE_DROP, DEDUP_DROP, KEPT

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "svg.hashsalt": "lmhpc-report",
    "svg.fonttype": "none",
}
STATUS_COLORS = {KEPT: "#2a9d8f", CURATE_DROP: "#e76f51", DEDUP_DROP: "#f4a261"}
PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d", "#bab0ac",
           "#ff9da6", "#1f3b73", "#a0522d", "#2e8b57", "#8b1a1a", "#2f4f4f", "#6a3d9a", "#b8860b", "#5f9ea0",
           "#808000", "#c71585"]


@dataclass(frozen=True)
class Chart:
    """One rendered chart: a stable name (``data-chart`` in the page), a title, the image, a caption."""

    name: str
    title: str
    uri: str
    caption: str = ""
    wide: bool = False  # spans the page's width


def color_for(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name, in the order given (status names keep their own colours)."""
    out: dict[str, str] = {}
    i = 0
    for name in names:
        if name in STATUS_COLORS:
            out[name] = STATUS_COLORS[name]
        else:
            out[name] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def figure(width: float = 6.4, height: float = 3.2, rows: int = 1, cols: int = 1) -> tuple[Figure, np.ndarray]:
    """A new figure and its axes (always a 2-D array)."""
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def render(fig: Figure, name: str, title: str, caption: str = "", fmt: str = "svg", wide: bool = False) -> Chart:
    """Save ``fig`` as a data URI (``svg`` or ``png``)."""
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        if fmt == "svg":
            fig.savefig(buf, format="svg", metadata={"Date": None})
            mime = "image/svg+xml"
        else:
            fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
            mime = "image/png"
    return Chart(name, title, f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}", caption,
                 wide)


def short(label: str, width: int = 28) -> str:
    """A tick label cut to ``width`` characters."""
    return label if len(label) <= width else label[: width - 1] + "…"


def bars(name: str, title: str, labels: Sequence[str], series: dict[str, Sequence[float]], xlabel: str = "",
         caption: str = "", stacked: bool = True, log: bool = False, colors: dict[str, str] | None = None,
         label_width: int = 28) -> Chart:
    """Horizontal bars, one row per label, one colour per series (stacked or side by side)."""
    n = len(labels)
    beside = len(series) > 4  # a long legend goes beside the bars, a short one below them
    below = 1 < len(series) <= 4
    rows_height = 0.24 * n * (1 if stacked else max(1, len(series)) * 0.6)
    fig, axes = figure(6.4, max(1.6, 0.6 + rows_height + 0.3 * below, 0.4 + 0.17 * len(series) * beside))
    ax = axes[0, 0]
    with matplotlib.rc_context(STYLE):
        y = np.arange(n)
        colors = colors or color_for(list(series))
        left = np.zeros(n)
        height = 0.8 if stacked else 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            v = np.asarray(values, dtype=float)
            if stacked:
                ax.barh(y, v, left=left, height=height, label=label, color=colors[label])
                left += v
            else:
                ax.barh(y - 0.4 + height * (i + 0.5), v, height=height, label=label, color=colors[label])
        ax.set_yticks(y, [short(s, label_width) for s in labels])
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if beside:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
        elif below:
            fig.legend(loc="outside lower center", ncols=min(len(series), 2))
    return render(fig, name, title, caption)


def histogram(ax: object, groups: dict[str, Sequence[float]], bins: np.ndarray, colors: dict[str, str],
              share: bool = True) -> None:
    """Overlaid step histograms of several groups on one axis; with ``share`` each group's bars sum to 100% (groups
    of different sizes compare by shape)."""
    for label, values in groups.items():
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if len(v):
            w = np.full(len(v), 100.0 / len(v)) if share else None
            ax.hist(v, bins=bins, weights=w, histtype="stepfilled", alpha=0.3, color=colors[label])
            ax.hist(v, bins=bins, weights=w, histtype="step", linewidth=1.3, color=colors[label],
                    label=f"{label} ({len(v):,})")


def log_bins(values: Sequence[float], n: int = 40) -> np.ndarray:
    """Logarithmic bin edges covering the positive values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return np.logspace(0, 1, n)
    lo, hi = float(v.min()), float(v.max())
    return np.logspace(np.log10(lo), np.log10(hi * 1.0001 if hi > lo else lo * 10), n)


def lin_bins(values: Sequence[float], extra: Sequence[float] = (), n: int = 30) -> np.ndarray:
    """Linear bin edges covering the values and the ``extra`` points (thresholds)."""
    v = np.asarray([*values, *extra], dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return np.linspace(0, 1, n)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n)
