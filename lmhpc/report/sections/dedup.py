"""Deduplication: how many documents were duplicates, the sizes of their groups, and the largest groups."""

from __future__ import annotations

from typing import Any

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.run import as_dict, as_int, read_json

CLUSTERS_SHOWN = 5
MEMBERS_SHOWN = 4
SHOWN_CHARS = 600


def _size_order(label: str) -> int:
    head = label.split("-", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def _sizes_chart(stats: dict[str, Any]) -> charts.Chart | None:
    hists = {kind: as_dict(as_dict(stats.get(kind)).get("size_hist")) for kind in ("exact", "near")}
    labels = sorted({b for h in hists.values() for b in h}, key=_size_order)
    if not labels:
        return None
    series = {f"{kind} duplicates": [as_int(h.get(b)) for b in labels] for kind, h in hists.items() if h}
    return charts.bars("dedup-cluster-sizes", "Duplicate groups by size", [f"{b} documents" for b in labels], series,
                       xlabel="groups", stacked=False, log=True, caption="exact counts (log scale); a group keeps one "
                       "document and drops the others")


def _member(doc: dict[str, Any], kept: bool) -> str:
    text = doc.get("text") if isinstance(doc.get("text"), str) else ""
    meta = " · ".join(x for x in (f"source {doc.get('source')}" if doc.get("source") else "",
                                  f"url {doc.get('url')}" if doc.get("url") else "") if x)
    return html.document(f"{'kept' if kept else 'dropped'} — {doc.get('id', '')}", meta, text[:SHOWN_CHARS], kept,
                         cut=len(text) > SHOWN_CHARS)


def _clusters(clusters: dict[str, Any]) -> str:
    out = []
    for kind in ("near", "exact"):
        groups = [g for g in clusters.get(kind, []) if isinstance(g, dict)][:CLUSTERS_SHOWN]
        for i, group in enumerate(groups, 1):
            members = [m for m in group.get("members", []) if isinstance(m, dict)]
            kept = as_dict(group.get("kept"))
            body = _member(kept, True) + "".join(_member(m, False) for m in members[:MEMBERS_SHOWN])
            more = len(members) - MEMBERS_SHOWN
            if more > 0:
                body += html.note(f"and {more} more member(s) in dedup/clusters.json")
            out.append(html.details(f"{kind} group {i}: {as_int(group.get('size'))} documents", body))
    return "".join(out)


def render(rin: ReportInput) -> html.Section | None:
    stats = rin.run.stats("dedup")
    if not stats:
        return None
    exact, near = as_dict(stats.get("exact")), as_dict(stats.get("near"))
    dropped = as_dict(stats.get("dropped"))
    body = [html.cards([(f"{as_int(stats.get('docs_in')):,}", "documents in"),
                        (f"{as_int(dropped.get('exact')):,}", "exact duplicates dropped"),
                        (f"{as_int(dropped.get('near')):,}", "near duplicates dropped"),
                        (f"{as_int(near.get('clusters')):,}", "near-duplicate groups"),
                        (f"{as_int(near.get('verified_pairs')):,} / {as_int(near.get('candidate_pairs')):,}",
                         "pairs verified / candidates")])]
    settings = as_dict(stats.get("settings"))
    if settings:
        body.append(html.note(", ".join(f"{k} {settings[k]}" for k in ("shingle", "ngram", "num_perm", "bands", "rows",
                                                                       "threshold") if k in settings)))
    chart_list = [c for c in (_sizes_chart(stats),) if c]
    body.append(html.grid(chart_list))
    rows = [[kind, as_int(s.get("groups") or s.get("clusters")), as_int(s.get("docs_in_groups") or
                                                                         s.get("docs_in_clusters")),
             as_int(dropped.get(kind))] for kind, s in (("exact", exact), ("near", near)) if s]
    if rows:
        body.append(html.table(["kind", "groups", "documents in groups", "dropped"], rows))
    clusters = as_dict(read_json(rin.run.stage_dir("dedup") / "clusters.json"))
    if clusters:
        body.append("<h3>The largest groups</h3>")
        body.append(html.note(f"From dedup/clusters.json: the first {SHOWN_CHARS} characters of the document kept "
                              "and of the documents dropped in its place."))
        body.append(_clusters(clusters))
    return html.Section("dedup", "Deduplication", "".join(body), chart_list)
