"""Examples: kept documents per source and dropped documents per reason, shown as escaped text."""

from __future__ import annotations

from collections import defaultdict

from lmhpc.report import html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import KEPT, DocRecord
from lmhpc.report.run import as_dict, as_int

SHOWN_CHARS = 1500
PER_GROUP = 3


def _doc(d: DocRecord) -> str:
    where = " · ".join(x for x in (f"source {d.source}", f"host {d.host}" if d.host else "",
                                   f"url {d.url}" if d.url else "", f"language {d.language}",
                                   f"{d.chars:,} characters") if x)
    title = d.reason or "kept"
    return html.document(f"{title} — {d.id}", where, d.text[:SHOWN_CHARS], d.status == KEPT,
                         cut=d.chars > SHOWN_CHARS)


def _grouped(docs: list[DocRecord], key: str) -> dict[str, list[DocRecord]]:
    groups: dict[str, list[DocRecord]] = defaultdict(list)
    for d in docs:
        name = getattr(d, key) or "unknown"
        if len(groups[name]) < PER_GROUP:
            groups[name].append(d)
    return dict(groups)


def drop_counts(rin: ReportInput) -> dict[str, int]:
    """Qualified reason → documents dropped for it, by curate and by dedup (``dedup/near``), from the stats."""
    counts = {r: as_int(n) for r, n in as_dict(rin.run.stats("curate").get("dropped")).items()}
    counts.update({f"dedup/{r}": as_int(n) for r, n in as_dict(rin.run.stats("dedup").get("dropped")).items()})
    return counts


def render(rin: ReportInput) -> html.Section | None:
    samples = rin.samples
    if not samples.all:
        return None
    kept = dict(sorted(_grouped([d for d in samples.kept if d.status == KEPT], "source").items()))
    counts = drop_counts(rin)
    dropped = dict(sorted(_grouped([d for d in samples.all if d.status != KEPT], "reason").items(),
                          key=lambda kv: (-counts.get(kv[0], 0), kv[0])))
    body = [html.note(f"Texts cut at {SHOWN_CHARS:,} characters; every text is shown as text, never as markup. "
                      f"Kept: from the sample of curate's output that dedup kept. Dropped: {samples.dropped_note}, "
                      "and the sampled documents dedup dropped.")]
    body.append("<h3>Kept, per source</h3>")
    body += [html.details(f"{source}: {len(docs)} example(s)", "".join(_doc(d) for d in docs), open_=i == 0)
             for i, (source, docs) in enumerate(kept.items())] or [html.missing("no kept document in the sample")]
    body.append("<h3>Dropped, per reason (most frequent first)</h3>")
    body += [html.details(f"{reason}: {counts[reason]:,} dropped; {len(docs)} example(s)" if reason in counts else
                          f"{reason}: {len(docs)} example(s)", "".join(_doc(d) for d in docs), open_=i == 0)
             for i, (reason, docs) in enumerate(dropped.items())] or [html.missing("no dropped document on disk")]
    return html.Section("examples", "Examples of kept and dropped documents", "".join(body))
