"""The document map: sampled documents placed by content, coloured by source, by outcome and by cluster."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.docmap import DocMap, build_map
from lmhpc.report.docs import CURATE_DROP, DEDUP_DROP, KEPT, DocRecord

MAX_DOCS = 3000
CLUSTERS = 8


def _scatter(name: str, title: str, m: DocMap, groups: list[str], caption: str, order: list[str]) -> charts.Chart:
    fig, axes = charts.figure(6.4, 4.6)
    ax = axes[0, 0]
    colors = charts.color_for(order)
    for g in order:
        mask = np.array([x == g for x in groups])
        if mask.any():
            ax.scatter(m.xy[mask, 0], m.xy[mask, 1], s=7, alpha=0.6, color=colors[g], label=f"{g} ({mask.sum():,})",
                       linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, loc="best")
    return charts.render(fig, name, title, caption, fmt="png")


def _cluster_scatter(m: DocMap) -> charts.Chart:
    fig, axes = charts.figure(6.4, 4.6)
    ax = axes[0, 0]
    k = len(m.top_terms)
    colors = charts.color_for([f"c{i}" for i in range(k)])
    for c in range(k):
        mask = m.labels == c
        if mask.any():
            ax.scatter(m.xy[mask, 0], m.xy[mask, 1], s=7, alpha=0.6, color=colors[f"c{c}"], linewidths=0)
            cx, cy = np.median(m.xy[mask], axis=0)
            ax.text(cx, cy, str(c), fontsize=11, fontweight="bold", ha="center", va="center",
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": colors[f"c{c}"], "alpha": 0.85})
    ax.set_xticks([])
    ax.set_yticks([])
    return charts.render(fig, "map-clusters", "Document map by k-means cluster",
                         "numbers: the clusters of the table below, at their median position", fmt="png")


def _pick(docs: list[DocRecord], seed: int) -> list[DocRecord]:
    if len(docs) <= MAX_DOCS:
        return docs
    return random.Random(seed).sample(docs, MAX_DOCS)


def render(rin: ReportInput) -> html.Section | None:
    docs = _pick([d for d in rin.samples.all if d.text.strip()], rin.seed)
    m = build_map([d.text for d in docs], clusters=CLUSTERS, seed=rin.seed)
    if m is None:
        return None
    sources = sorted({d.source for d in docs})
    statuses = [s for s in (KEPT, DEDUP_DROP, CURATE_DROP) if any(d.status == s for d in docs)]
    chart_list = [
        _scatter("map-source", "Document map by source", m, [d.source for d in docs],
                 "each dot a sampled document; nearby dots share vocabulary", sources),
        _scatter("map-status", "Document map: kept and dropped", m, [d.status for d in docs],
                 "the same map, coloured by what the pipeline did with each document", statuses),
        _cluster_scatter(m),
    ]
    rows = []
    for c, terms in enumerate(m.top_terms):
        members = [d for d, label in zip(docs, m.labels) if label == c]
        if not members:
            continue
        mix = Counter(d.source for d in members)
        kept = sum(d.status == KEPT for d in members)
        rows.append([c, len(members), ", ".join(f"{s} {100 * n / len(members):.0f}%" for s, n in mix.most_common(3)),
                     html.share(kept, len(members)), " · ".join(terms)])
    body = [html.note(f"{len(docs):,} sampled documents (kept, dropped by curate, dropped by dedup): TF-IDF over "
                      f"words and word pairs ({m.n_terms:,} terms), truncated SVD to {m.n_components} components, "
                      f"k-means into {len(m.top_terms)} clusters; the plot shows the first two principal axes of "
                      "the SVD space."),
            html.grid(chart_list),
            html.table(["cluster", "documents", "sources", "kept", "top terms"], rows)]
    return html.Section("map", "Document map", "".join(body), chart_list)
