"""Per domain / URL host: kept against dropped, the largest hosts of each, and their drop reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import CURATE_DROP, KEPT
from lmhpc.report.run import as_dict, as_int

TOP = 20


@dataclass
class Host:
    name: str
    docs_in: int
    docs_out: int
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def docs_dropped(self) -> int:
        return max(self.docs_in - self.docs_out, 0)


def read_hosts(rin: ReportInput) -> tuple[list[Host], str]:
    """Every host from ``report/domains.tsv``, else the largest ones kept in the stats; and where they came from."""
    path = rin.run.stage_dir("curate") / "report" / "domains.tsv"
    hosts: list[Host] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    except OSError:
        lines = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        dropped = {}
        for item in (parts[3].split(",") if len(parts) > 3 and parts[3] else []):
            reason, _, n = item.rpartition("=")
            if n.isdigit():
                dropped[reason] = int(n)
        hosts.append(Host(parts[0], int(parts[1]), int(parts[2]), dropped))
    if hosts:
        return hosts, f"all {len(hosts):,} hosts (curate/report/domains.tsv)"
    top = as_dict(rin.run.stats("curate").get("per_domain_top"))
    for name, sub in top.items():
        sub = as_dict(sub)
        hosts.append(Host(name, as_int(sub.get("docs_in")), as_int(sub.get("docs_out")),
                          {r: as_int(n) for r, n in as_dict(sub.get("dropped")).items()}))
    total = as_int(rin.run.stats("curate").get("domains"))
    return hosts, f"the {len(hosts)} largest of {total:,} hosts (curate's stats)" if hosts else ""


def _top_reasons(host: Host, n: int = 3) -> str:
    items = sorted(host.dropped.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{r} {c:,}" for r, c in items) or "–"


def render(rin: ReportInput) -> html.Section | None:
    hosts, origin = read_hosts(rin)
    if not hosts:
        return None
    total_in = sum(h.docs_in for h in hosts)
    total_out = sum(h.docs_out for h in hosts)
    body = [html.cards([(f"{len(hosts):,}", "hosts"), (f"{total_in:,}", "documents with a URL"),
                        (html.pct(total_out, total_in), "kept")]),
            html.note(f"From {origin}. A document's host is its URL's, lower-cased, without www.")]
    largest = sorted(hosts, key=lambda h: (-h.docs_in, h.name))[:TOP]
    by_kept = sorted((h for h in hosts if h.docs_out), key=lambda h: (-h.docs_out, h.name))[:TOP]
    by_dropped = sorted((h for h in hosts if h.docs_dropped), key=lambda h: (-h.docs_dropped, h.name))[:TOP]
    colors = {"kept": charts.STATUS_COLORS[KEPT], "dropped": charts.STATUS_COLORS[CURATE_DROP]}
    chart_list = [charts.bars("domains-largest", f"The {len(largest)} largest hosts: kept and dropped",
                              [h.name for h in largest],
                              {"kept": [h.docs_out for h in largest], "dropped": [h.docs_dropped for h in largest]},
                              xlabel="documents", colors=colors, caption="exact counts from the curate stage")]
    if by_kept:
        chart_list.append(charts.bars("domains-top-kept", "Hosts with the most kept documents",
                                      [h.name for h in by_kept], {"kept": [h.docs_out for h in by_kept]},
                                      xlabel="documents kept", colors=colors))
    if by_dropped:
        chart_list.append(charts.bars("domains-top-dropped", "Hosts with the most dropped documents",
                                      [h.name for h in by_dropped], {"dropped": [h.docs_dropped for h in by_dropped]},
                                      xlabel="documents dropped", colors=colors))
    body.append(html.grid(chart_list))
    rows = [[h.name, h.docs_in, h.docs_out, h.docs_dropped, html.share(h.docs_out, h.docs_in), _top_reasons(h)]
            for h in largest]
    body.append(html.table(["host", "docs in", "kept", "dropped", "kept share", "main drop reasons"], rows))
    if by_dropped:
        rows = [[h.name, h.docs_in, h.docs_dropped, html.share(h.docs_dropped, h.docs_in), _top_reasons(h)]
                for h in by_dropped]
        head = ["host", "docs in", "dropped", "dropped share", "main drop reasons"]
        body.append(html.details(f"The {len(by_dropped)} hosts with the most drops", html.table(head, rows)))
    return html.Section("domains", "Domains and URL hosts", "".join(body), chart_list)
