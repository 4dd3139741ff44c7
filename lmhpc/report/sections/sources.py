"""Per stage and source: documents and bytes in and out, drops by reason, and the filter funnel."""

from __future__ import annotations

from lmhpc.curate.report import filter_rows
from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.flows import Flow, flows, input_file_bytes
from lmhpc.report.run import as_dict, as_int

TOP_REASONS = 25


def _flow_table(rows: list[Flow], disk: dict[str, int]) -> str:
    table = []
    for f in rows:
        kept = html.share(f.docs_out, f.docs_in) if f.docs_in and f.docs_out is not None else None
        files = html.mb(disk[f.source]) if f.stage == "curate" and f.source in disk else ""
        table.append([f.stage, f.source, f.docs_in, f.docs_out, kept, html.Cell(files, True),
                      html.Cell(f.bytes_in.text() if f.bytes_in else "–", True),
                      html.Cell(f.bytes_out.text() if f.bytes_out else "–", True), f.tokens_out])
    return html.table(["stage", "source", "docs in", "docs out", "kept", "input files", "text in", "text out",
                       "tokens out"], table)


def _docs_chart(rows: list[Flow]) -> charts.Chart | None:
    sources = sorted({f.source for f in rows})
    series: dict[str, list[float]] = {}
    curate = {f.source: f for f in rows if f.stage == "curate"}
    dedup = {f.source: f for f in rows if f.stage == "dedup"}
    if curate:
        series["curate in"] = [curate[s].docs_in or 0 if s in curate else 0 for s in sources]
        series["curate out"] = [curate[s].docs_out or 0 if s in curate else 0 for s in sources]
    if dedup:
        series["dedup out"] = [dedup[s].docs_out or 0 if s in dedup else 0 for s in sources]
    if not series:
        return None
    return charts.bars("sources-docs", "Documents per source through the stages", sources, series, xlabel="documents",
                       stacked=False, caption="exact counts (dedup's per source as the tokenize stage counted them)")


def _reason_chart(per_source: dict[str, dict]) -> charts.Chart | None:
    totals: dict[str, int] = {}
    for sub in per_source.values():
        for reason, n in as_dict(as_dict(sub).get("dropped")).items():
            totals[reason] = totals.get(reason, 0) + as_int(n)
    reasons = [r for r, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS] if totals[r]]
    if not reasons:
        return None
    sources = sorted(per_source)
    series = {s: [as_int(as_dict(as_dict(per_source[s]).get("dropped")).get(r)) for r in reasons] for s in sources}
    shown = f"the {len(reasons)} largest of {len(totals)} reasons" if len(totals) > len(reasons) else "every reason"
    return charts.bars("sources-drop-reasons", "Curate: documents dropped by reason and source", reasons, series,
                       xlabel="documents dropped", caption=f"{shown}, stacked by source; exact counts", label_width=42)


def _funnel_chart(per_source: dict[str, dict]) -> charts.Chart | None:
    sources = [s for s in sorted(per_source) if as_int(as_dict(per_source[s]).get("docs_in"))]
    if not sources:
        return None
    cols = 2 if len(sources) > 1 else 1
    nrows = (len(sources) + cols - 1) // cols
    steps_max = max(len(filter_rows(as_dict(per_source[s]))) for s in sources) + 2
    fig, axes = charts.figure(6.4 if cols == 1 else 9.6, max(2.0, nrows * (0.6 + 0.2 * steps_max)), nrows, cols)
    for i, source in enumerate(sources):
        ax = axes[i // cols, i % cols]
        sub = as_dict(per_source[source])
        docs_in = as_int(sub.get("docs_in"))
        rows = filter_rows(sub)
        labels = ["input"] + [r["filter"] for r in rows]
        left = [docs_in] + [r["reached"] - r["dropped"] for r in rows]
        ax.barh(range(len(labels)), left, color=charts.PALETTE[i % len(charts.PALETTE)])
        for y, n in enumerate(left):
            ax.text(n, y, f" {100 * n / docs_in:.0f}%", va="center", fontsize=7)
        ax.set_yticks(range(len(labels)), labels)
        ax.invert_yaxis()
        ax.set_title(f"{source} ({docs_in:,} in)")
        ax.grid(axis="y", visible=False)
        ax.set_xlim(0, docs_in * 1.18)
    for j in range(len(sources), nrows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return charts.render(fig, "sources-funnel", "Curate: the filter funnel per source",
                         "documents left after each filter of the source's chain, in order (last bars: selection "
                         "and mixing); share of the source's input", wide=cols > 1)


def render(rin: ReportInput) -> html.Section | None:
    rows = flows(rin)
    per_source = as_dict(rin.run.stats("curate").get("per_source"))
    if not rows and not per_source:
        return None
    disk = input_file_bytes(rin)
    body = [_flow_table(rows, disk),
            html.note("Documents are exact. Text bytes are exact where a later stage measured them (the tokenize or "
                      "tokenizer stage read all of dedup's output); ≈ marks estimates: documents × the mean size of "
                      "that source's sampled documents (dropped ones by reason). Input files are their size on disk, "
                      "compressed.")]
    chart_list = [c for c in (_docs_chart(rows), _reason_chart(per_source), _funnel_chart(per_source)) if c]
    body.append(html.grid(chart_list))
    if per_source:
        reasons = []
        for source in sorted(per_source):
            sub = as_dict(per_source[source])
            n_in = as_int(sub.get("docs_in"))
            for reason, n in sorted(as_dict(sub.get("dropped")).items(), key=lambda kv: -as_int(kv[1])):
                reasons.append([source, reason, as_int(n), html.share(as_int(n), n_in)])
            for reason, n in sorted(as_dict(sub.get("quarantine_reasons")).items()):
                reasons.append([source, f"quarantine/{reason}", as_int(n), html.share(as_int(n), n_in)])
        body.append(html.details(f"Curate: every drop reason per source ({len(reasons)} rows)",
                                 html.table(["source", "reason", "documents", "of the source's input"], reasons)))
    return html.Section("sources", "Stages and sources", "".join(body), chart_list)
