"""Distributions: document length by outcome and by source, and the language mix per source."""

from __future__ import annotations

from collections import Counter, defaultdict

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import CURATE_DROP, DEDUP_DROP, KEPT, DocRecord
from lmhpc.report.run import as_dict, as_int, read_json

TOP_LANGUAGES = 12


def _length_by_status(docs: list[DocRecord]) -> charts.Chart | None:
    groups = {s: [d.chars for d in docs if d.status == s] for s in (KEPT, DEDUP_DROP, CURATE_DROP)}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    fig, axes = charts.figure()
    ax = axes[0, 0]
    every = [x for v in groups.values() for x in v]
    charts.histogram(ax, groups, charts.log_bins(every), charts.color_for(list(groups)))
    ax.set_xscale("log")
    ax.set_xlabel("characters per document")
    ax.set_ylabel("% of the group")
    ax.legend()
    return charts.render(fig, "dist-length-status", "Document length: kept and dropped",
                         "sampled documents, each group summing to 100%; curate's drops are those kept for "
                         "inspection unless dropped/ was written")


def _length_by_source(docs: list[DocRecord]) -> charts.Chart | None:
    by_source: dict[str, list[int]] = defaultdict(list)
    for d in docs:
        by_source[d.source].append(d.chars)
    if not by_source:
        return None
    names = sorted(by_source)
    fig, axes = charts.figure()
    ax = axes[0, 0]
    charts.histogram(ax, {n: by_source[n] for n in names}, charts.log_bins([x for v in by_source.values() for x in v]),
                     charts.color_for(names))
    ax.set_xscale("log")
    ax.set_xlabel("characters per document")
    ax.set_ylabel("% of the group")
    ax.legend()
    return charts.render(fig, "dist-length-source", "Document length per source (curate's output)",
                         "sampled documents curate kept")


def language_counts(rin: ReportInput) -> tuple[dict[str, Counter[str]], str]:
    """Source → language → documents: exact from the tokenizer stage (every document dedup kept), else sampled."""
    seen = as_dict(as_dict(read_json(rin.run.stage_dir("tokenizer") / "sample.json")).get("input"))
    if seen:
        out = {s: Counter({lang: as_int(as_dict(v).get("docs")) for lang, v in as_dict(langs).items()})
               for s, langs in seen.items()}
        return out, "every document dedup kept, as the tokenizer stage counted them (exact)"
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for d in rin.samples.kept:
        if d.status == KEPT:
            out[d.source][d.language] += 1
    return dict(out), "sampled documents of curate's output that dedup kept"


def _language_chart(counts: dict[str, Counter[str]], origin: str) -> charts.Chart | None:
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    if not total:
        return None
    top = [lang for lang, _ in total.most_common(TOP_LANGUAGES)]
    sources = sorted(counts)
    size = {s: sum(counts[s].values()) or 1 for s in sources}
    series = {lang: [100 * counts[s].get(lang, 0) / size[s] for s in sources] for lang in top}
    other = [100 * sum(n for lang, n in counts[s].items() if lang not in top) / size[s] for s in sources]
    if any(other):
        series["other"] = other
    return charts.bars("dist-language-source", "Language mix per source", sources, series,
                       xlabel="% of the source's documents",
                       caption=f"{origin}; the {len(top)} most frequent of {len(total)} languages")


def _language_outcome(docs: list[DocRecord]) -> charts.Chart | None:
    counts = {s: Counter(d.language for d in docs if d.status == s) for s in (KEPT, DEDUP_DROP, CURATE_DROP)}
    counts = {s: c for s, c in counts.items() if c}
    if len(counts) < 2:
        return None
    total: Counter[str] = Counter()
    for c in counts.values():
        total.update(c)
    top = [lang for lang, _ in total.most_common(TOP_LANGUAGES)]
    series = {s: [100 * c.get(lang, 0) / sum(c.values()) for lang in top] for s, c in counts.items()}
    return charts.bars("dist-language-outcome", "Language share: kept and dropped", top, series, stacked=False,
                       xlabel="% of the group's sampled documents", caption="sampled documents")


def render(rin: ReportInput) -> html.Section | None:
    docs = rin.samples.all
    counts, origin = language_counts(rin)
    chart_list = [c for c in (_length_by_status(docs), _length_by_source(rin.samples.kept),
                              _language_chart(counts, origin), _language_outcome(docs)) if c]
    if not chart_list:
        return None
    body = [html.grid(chart_list)]
    if counts:
        total: Counter[str] = Counter()
        for c in counts.values():
            total.update(c)
        n = sum(total.values())
        rows = [[lang, docs_n, html.share(docs_n, n),
                 ", ".join(f"{s} {counts[s][lang]:,}" for s in sorted(counts) if counts[s].get(lang))]
                for lang, docs_n in total.most_common()]
        body.append(html.details(f"Every language ({len(rows)})", html.table(["language", "documents", "share",
                                                                             "per source"], rows)))
    return html.Section("distributions", "Distributions: length and language", "".join(body), chart_list)
