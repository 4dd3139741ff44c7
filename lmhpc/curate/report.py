"""The curate report: each filter's effect on each source and domain, and drops by reason.

Built from the merged stats; each subset (source or domain) holds ``docs_in``, ``docs_out``,
``quarantined``, ``dropped`` (qualified reason → count) and ``chain`` (its filters in order), from
which the documents reaching each filter and the kept fraction before and after it follow.
"""

from __future__ import annotations

from typing import Any


def filter_rows(subset: dict[str, Any]) -> list[dict[str, Any]]:
    """Per filter of the subset's chain: reached, dropped, kept share before and after it."""
    docs_in = subset.get("docs_in", 0)
    remaining = docs_in - subset.get("quarantined", 0)
    by_filter: dict[str, int] = {}
    for reason, n in subset.get("dropped", {}).items():
        name = reason.split("/", 1)[0]
        by_filter[name] = by_filter.get(name, 0) + n
    order = [n for n in str(subset.get("chain", "")).split(">") if n]
    order += sorted(n for n in by_filter if n not in order)  # selection, mixing, or chains of other subsets
    rows = []
    for name in order:
        dropped = by_filter.get(name, 0)
        before = remaining / docs_in if docs_in else 0.0
        rows.append({
            "filter": name,
            "reached": remaining,
            "dropped": dropped,
            "kept_before": before,
            "kept_after": (remaining - dropped) / docs_in if docs_in else 0.0,
        })
        remaining -= dropped
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_report(stats: dict[str, Any], top_domains: int = 20) -> str:
    """The printed tables: per source and filter, per source and reason, then the largest domains."""
    lines: list[str] = []
    total_in = stats.get("docs_in", 0)
    lines.append(f"curate: {total_in} documents in, {stats.get('docs_out', 0)} kept "
                 f"({_pct(stats.get('docs_out', 0) / total_in if total_in else 0.0).strip()}), "
                 f"{stats.get('quarantined', 0)} quarantined, {sum(stats.get('dropped', {}).values())} dropped")
    sources = stats.get("per_source", {})
    lines.append("")
    lines.append("per source and filter (kept share of the source's documents before -> after the filter)")
    lines.append(f"{'source':<16} {'filter':<18} {'reached':>8} {'dropped':>8} {'before':>7} {'after':>7}")
    for source in sorted(sources):
        sub = sources[source]
        lines.append(f"{source:<16} {'(input)':<18} {sub.get('docs_in', 0):>8} {sub.get('quarantined', 0):>8} "
                     f"{'':>7} {_pct(1 - sub.get('quarantined', 0) / sub['docs_in'] if sub.get('docs_in') else 0)}")
        for row in filter_rows(sub):
            lines.append(f"{'':<16} {row['filter']:<18} {row['reached']:>8} {row['dropped']:>8} "
                         f"{_pct(row['kept_before'])} {_pct(row['kept_after'])}")
    lines.append("")
    lines.append("drops per source and reason")
    lines.append(f"{'source':<16} {'reason':<44} {'docs':>8} {'of in':>7}")
    for source in sorted(sources):
        sub = sources[source]
        reasons = sorted(sub.get("dropped", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        reasons += sorted((f"quarantine/{r}", n) for r, n in sub.get("quarantine_reasons", {}).items())
        for reason, n in reasons:
            share = n / sub["docs_in"] if sub.get("docs_in") else 0.0
            lines.append(f"{source:<16} {reason:<44} {n:>8} {_pct(share)}")
    domains = stats.get("per_domain", {})
    if domains and top_domains:
        lines.append("")
        shown = sorted(domains.items(), key=lambda kv: (-kv[1].get("docs_in", 0), kv[0]))[:top_domains]
        lines.append(f"largest {len(shown)} of {len(domains)} domains")
        lines.append(f"{'domain':<36} {'in':>7} {'kept':>7} {'kept%':>7}  kept share after each filter that dropped")
        for domain, sub in shown:
            kept = sub.get("docs_out", 0)
            share = kept / sub["docs_in"] if sub.get("docs_in") else 0.0
            steps = " ".join(f"{r['filter']}:{_pct(r['kept_after']).strip()}" for r in filter_rows(sub) if r["dropped"])
            lines.append(f"{domain:<36} {sub.get('docs_in', 0):>7} {kept:>7} {_pct(share)}  {steps or '-'}")
    return "\n".join(lines)


def domain_table(stats: dict[str, Any]) -> str:
    """Every domain as TSV: domain, in, kept, then each drop reason with its count."""
    rows = ["domain\tdocs_in\tdocs_out\tdropped"]
    for domain, sub in sorted(stats.get("per_domain", {}).items()):
        reasons = ",".join(f"{r}={n}" for r, n in sorted(sub.get("dropped", {}).items()))
        rows.append(f"{domain}\t{sub.get('docs_in', 0)}\t{sub.get('docs_out', 0)}\t{reasons}")
    return "\n".join(rows) + "\n"
