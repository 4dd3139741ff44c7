"""Overview: the run's stages, what each took in and gave out, and the documents left after each step."""

from __future__ import annotations

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.run import as_dict, as_int

DATA_STAGES = ("curate", "dedup", "tokenize")


def _stage_rows(rin: ReportInput) -> list[list[object]]:
    rows: list[list[object]] = []
    for stage in rin.run.stages():
        stats = rin.run.stats(stage)
        state = "done" if rin.run.done(stage) else ("failed" if (rin.run.stage_dir(stage) / "stats.failed.json")
                                                    .exists() else "incomplete")
        dropped = as_dict(stats.get("dropped"))
        seconds = stats.get("seconds")
        wall = seconds if isinstance(seconds, int | float) else None
        rows.append([stage, state,
                     as_int(stats.get("docs_in")) if "docs_in" in stats else None,
                     as_int(stats.get("docs_out")) if "docs_out" in stats else None,
                     as_int(stats.get("quarantined")) if "quarantined" in stats else None,
                     sum(as_int(v) for v in dropped.values()) if dropped or "dropped" in stats else None,
                     as_int(stats.get("tokens")) if "tokens" in stats else None,
                     round(float(wall), 1) if wall is not None else None])
    return rows


def render(rin: ReportInput) -> html.Section | None:
    run = rin.run
    rows = _stage_rows(rin)
    if not rows:
        return None
    curate, dedup, tokenize = (run.stats(s) for s in DATA_STAGES)
    steps: list[tuple[str, int]] = []
    if curate:
        steps += [("read by curate", as_int(curate.get("docs_in"))), ("kept by curate", as_int(curate.get("docs_out")))]
    if dedup:
        if not curate:
            steps.append(("read by dedup", as_int(dedup.get("docs_in"))))
        steps.append(("kept by dedup", as_int(dedup.get("docs_out"))))
    if tokenize:
        steps.append(("tokenized", as_int(tokenize.get("docs_out"))))
    headline = [(f"{n:,}", label) for label, n in steps]
    if tokenize.get("tokens"):
        headline.append((f"{as_int(tokenize['tokens']) / 1e6:,.2f} M", "tokens"))
    body = [html.cards(headline),
            html.table(["stage", "state", "docs in", "docs out", "quarantined", "dropped", "tokens", "seconds"], rows)]
    chart_list = []
    if len(steps) > 1:
        chart_list.append(charts.bars("overview-funnel", "Documents left after each step", [s for s, _ in steps],
                                      {"documents": [n for _, n in steps]}, xlabel="documents",
                                      caption="exact counts from each stage's stats.json"))
    body.append(html.grid(chart_list))
    samples = rin.samples
    if samples.all:
        body.append(html.note(
            f"Figures marked as sampled use {samples.kept_note.describe(as_int(curate.get('docs_out')) or None)} "
            f"from curate's output (each marked kept or dropped by dedup), and {samples.dropped_note} "
            f"(seed {rin.seed}, at most {rin.budget:,} documents each)."))
    return html.Section("overview", "Overview", "".join(body), chart_list)
