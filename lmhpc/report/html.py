"""HTML building blocks of the report: escaping, tables, figures, document excerpts, the page.

Every piece of data (document text, URLs, source and host names, reasons) passes through :func:`esc`, and the
page's Content-Security-Policy forbids scripts, external loads and plugins: a document holding HTML or
``<script>`` shows as text and could not run even if an escape were missed. URLs are shown, never linked.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lmhpc.report.charts import Chart

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #d9dee5; --bg: #f6f7f9; --accent: #2a6f97; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: var(--ink);
       background: var(--bg); }
header { background: #17324d; color: #fff; padding: 18px 32px 10px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0 0 8px; color: #c8d6e5; }
nav { display: flex; flex-wrap: wrap; gap: 6px 14px; padding: 6px 0 4px; }
nav a { color: #fff; text-decoration: none; border-bottom: 1px dotted #8fb3d1; }
main { max-width: 1320px; margin: 0 auto; padding: 8px 32px 40px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; margin: 18px 0; padding: 6px 22px 18px; }
h2 { font-size: 19px; margin: 14px 0 6px; color: #17324d; }
h3 { font-size: 15px; margin: 16px 0 6px; }
p.note { color: var(--muted); margin: 4px 0 10px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 14px; }
figure { margin: 6px 0; }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 2px; }
figcaption b { color: var(--ink); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px; text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
details { border: 1px solid var(--line); border-radius: 4px; margin: 6px 0; padding: 4px 10px; background: #fbfcfd; }
summary { cursor: pointer; font-weight: 600; }
.doc { border-left: 3px solid var(--line); margin: 8px 0; padding: 2px 10px; }
.doc.kept { border-color: #2a9d8f; } .doc.dropped { border-color: #e76f51; }
.meta { color: var(--muted); font-size: 12px; word-break: break-all; }
pre.text { white-space: pre-wrap; word-break: break-word; max-height: 260px; overflow: auto; background: #f3f5f7;
           padding: 6px 8px; margin: 4px 0; font: 12px/1.4 "DejaVu Sans Mono", monospace; }
.missing { color: var(--muted); font-style: italic; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 8px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 150px; background: #fbfcfd; }
.card .v { font-size: 20px; font-weight: 600; } .card .k { color: var(--muted); font-size: 12px; }
"""


def esc(value: object) -> str:
    """``value`` as HTML text: escaped, and valid UTF-8 even when it holds lone surrogates."""
    text = value if isinstance(value, str) else str(value)
    return html.escape(text.encode("utf-8", "replace").decode("utf-8"), quote=True)


def num(value: object, digits: int = 3) -> str:
    """A number for a table cell: thousands separators for integers, ``digits`` significant decimals else."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return esc(value)


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def share(part: float, whole: float) -> Cell:
    """A percentage for a table cell (right-aligned)."""
    return Cell(pct(part, whole), numeric=True)


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.2f} MB"


@dataclass
class Cell:
    """A table cell: already-built HTML, right-aligned when numeric."""

    html: str
    numeric: bool = False


def cell(value: object) -> Cell:
    """A cell for a plain value (numbers right-aligned; text escaped)."""
    if isinstance(value, Cell):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) or value is None:
        return Cell(num(value), numeric=True)
    return Cell(esc(value))


def table(head: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> str:
    """An HTML table; cells are escaped unless given as :class:`Cell`."""
    out = ['<div class="scroll"><table>']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>")
    for row in rows:
        cells = [cell(v) for v in row]
        out.append("<tr>" + "".join(f'<td class="num">{c.html}</td>' if c.numeric else f"<td>{c.html}</td>"
                                    for c in cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def figure(chart: Chart) -> str:
    """A chart as an ``<img>`` with its title and caption."""
    caption = f"<b>{esc(chart.title)}</b>" + (f" — {esc(chart.caption)}" if chart.caption else "")
    wide = ' class="wide"' if chart.wide else ""
    return (f'<figure{wide}><img class="chart" data-chart="{esc(chart.name)}" alt="{esc(chart.title)}" '
            f'src="{chart.uri}"><figcaption>{caption}</figcaption></figure>')


def grid(charts: Sequence[Chart]) -> str:
    return '<div class="grid">' + "".join(figure(c) for c in charts) + "</div>" if charts else ""


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def missing(text: str) -> str:
    return f'<p class="missing">{esc(text)}</p>'


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline figures: (value, label) pairs."""
    return '<div class="cards">' + "".join(f'<div class="card"><div class="v">{esc(v)}</div>'
                                           f'<div class="k">{esc(k)}</div></div>' for v, k in items) + "</div>"


def document(title: str, meta: str, text: str, kept: bool, cut: bool = False) -> str:
    """One document excerpt: its title line, a line of metadata, its text (escaped, in a ``<pre>``)."""
    tail = " …" if cut else ""
    return (f'<div class="doc {"kept" if kept else "dropped"}"><div><b>{esc(title)}</b></div>'
            f'<div class="meta">{esc(meta)}</div><pre class="text">{esc(text)}{tail}</pre></div>')


def details(summary: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{esc(summary)}</summary>{body}</details>"


@dataclass
class Section:
    """One section of the page: an anchor id, a title, its HTML and the charts it holds."""

    id: str
    title: str
    body: str
    charts: list[Chart] = field(default_factory=list)


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole document."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav></header>\n"
        f"<main>{body}</main></body></html>\n"
    )
