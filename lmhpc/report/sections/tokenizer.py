"""The tokenizer per source and language, from the stage's own analysis, and next to an auxiliary tokenizer.

The stage measured its tokenizer on held-out text it never trained on. With ``--aux-tokenizer`` both
tokenizers are measured here on the same documents: sampled documents dedup kept, less those the tokenizer
was trained on (``sample_ids.json``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import KEPT
from lmhpc.report.run import as_dict, read_json
from lmhpc.report.tokens import TokenFigures, measure, stage_figures

log = logging.getLogger("lmhpc.report")
TOP_LANGUAGES = 15
LABELS = {"bytes_per_token": "bytes per token", "tokens_per_word": "tokens per word (fertility)",
          "byte_fallback_share": "byte-fallback share", "unknown_share": "unknown-token share"}


def _stage_part(analysis: dict[str, Any]) -> tuple[str, list[charts.Chart]]:
    by_source, by_language = as_dict(analysis.get("by_source")), as_dict(analysis.get("by_language"))
    own = as_dict(analysis.get("per_source_tokenizers"))
    rows = []
    groups = [(f"source {k}", as_dict(v)) for k, v in sorted(by_source.items())]
    groups += [(f"language {k}", as_dict(v)) for k, v in sorted(by_language.items(), key=lambda kv:
                                                                  -as_dict(kv[1]).get("bytes", 0))]
    if analysis.get("total"):
        groups.append(("total", as_dict(analysis["total"])))
    for name, g in groups:
        source_own = as_dict(own.get(name.removeprefix("source "))) if name.startswith("source ") else {}
        rows.append([name, g.get("docs"), round(float(g.get("bytes", 0)) / 1e6, 3), g.get("tokens"),
                     g.get("bytes_per_token"), g.get("tokens_per_word"),
                     html.Cell(f"{100 * float(g.get('byte_fallback_rate') or 0):.3f}%", True),
                     html.Cell(f"{100 * float(g.get('vocab_used') or 0):.1f}%", True),
                     source_own.get("own_bytes_per_token")])
    table = html.table(["group", "docs", "MB", "tokens", "bytes/token", "tokens/word", "byte fallback", "vocab used",
                        "own tokenizer bytes/token"], rows)
    chart_list = []
    sources = sorted(by_source)
    if sources:
        series = {"run's tokenizer": [stage_figures(as_dict(by_source[s]))["bytes_per_token"] for s in sources]}
        if own:
            series["tokenizer trained on the source alone"] = [float(as_dict(own.get(s)).get("own_bytes_per_token")
                                                                     or 0) for s in sources]
        chart_list.append(charts.bars("tokenizer-source-bpt", "Bytes per token per source (held-out text)", sources,
                                      series, xlabel="bytes per token (higher: fewer tokens)", stacked=False))
    langs = [k for k, _ in sorted(by_language.items(), key=lambda kv: -as_dict(kv[1]).get("bytes", 0))][:TOP_LANGUAGES]
    if langs:
        figs = [stage_figures(as_dict(by_language[x])) for x in langs]
        caption = f"the {len(langs)} languages with the most held-out text"
        chart_list.append(charts.bars("tokenizer-language-fertility", "Tokens per word per language (held-out text)",
                                      langs, {"tokens per word": [f["tokens_per_word"] for f in figs]},
                                      xlabel="tokens per whitespace word", caption=caption))
        chart_list.append(charts.bars("tokenizer-language-fallback",
                                      "Byte-fallback tokens per language (held-out text)", langs,
                                      {"byte fallback": [100 * f["byte_fallback_share"] for f in figs]},
                                      xlabel="% of tokens that are UTF-8 byte pieces", caption=caption))
    return table, chart_list


def _share(x: float) -> html.Cell:
    return html.Cell(f"{100 * x:.3f}%", True)


def _comparison_docs(rin: ReportInput) -> list[tuple[str, str, str]]:
    trained = set(as_dict(read_json(rin.run.stage_dir("tokenizer") / "sample_ids.json")).get("train") or [])
    return [(d.source, d.language, d.text) for d in rin.samples.kept if d.status == KEPT and d.id not in trained
            and d.text.strip()]


def _compare_part(rin: ReportInput, aux: Path) -> tuple[str, list[charts.Chart]]:
    from lmhpc.exchange.tokenizer import load_tokenizer

    docs = _comparison_docs(rin)
    if not docs:
        return html.missing("no sampled document left to compare the tokenizers on"), []
    tokenizers = {}
    main_dir = rin.run.stage_dir("tokenizer")
    try:
        if (main_dir / "tokenizer.model").is_file() or (main_dir / "tokenizer.json").is_file():
            tokenizers["run's tokenizer"] = load_tokenizer(main_dir)
        tokenizers[f"auxiliary: {aux.name}"] = load_tokenizer(aux)
    except (OSError, ValueError, RuntimeError, FileNotFoundError) as e:
        return html.missing(f"cannot load a tokenizer: {e}"), []
    figures: dict[str, TokenFigures] = {name: measure(tok, docs) for name, tok in tokenizers.items()}
    names = list(figures)
    head = ["group", "tokenizer", "docs", "MB", "bytes per token", "tokens per word", "byte fallback", "unknown"]
    rows = []
    first = figures[names[0]]
    groups = [(f"source {s}", lambda f, s=s: f.by_source[s]) for s in sorted(first.by_source)]
    langs = sorted(first.by_language, key=lambda x: -first.by_language[x].bytes)
    groups += [(f"language {x}", lambda f, x=x: f.by_language[x]) for x in langs]
    groups.append(("total", lambda f: f.total))
    for label, get in groups:
        for n in names:
            tally = get(figures[n])
            figs = tally.figures()
            rows.append([label, n, tally.docs, round(tally.bytes / 1e6, 3), round(figs["bytes_per_token"], 3),
                         round(figs["tokens_per_word"], 3), _share(figs["byte_fallback_share"]),
                         _share(figs["unknown_share"])])
    sources = sorted(first.by_source)
    chart_list = [
        charts.bars("tokenizer-aux-source", "Bytes per token per source: run's and auxiliary tokenizer", sources,
                    {n: [figures[n].by_source[s].figures()["bytes_per_token"] for s in sources] for n in names},
                    xlabel="bytes per token (higher: fewer tokens)", stacked=False),
        charts.bars("tokenizer-aux-fertility", "Tokens per word per source", sources,
                    {n: [figures[n].by_source[s].figures()["tokens_per_word"] for s in sources] for n in names},
                    xlabel="tokens per whitespace word", stacked=False),
    ]
    top = langs[:TOP_LANGUAGES]
    if top:
        chart_list.append(charts.bars(
            "tokenizer-aux-language", "Bytes per token per language", top,
            {n: [figures[n].by_language[x].figures()["bytes_per_token"] for x in top] for n in names},
            xlabel="bytes per token", stacked=False, caption=f"the {len(top)} languages with the most sampled text"))
        shares = {f"{n}: {LABELS[f]}": [100 * figures[n].by_language[x].figures()[f] for x in top]
                  for n in names for f in ("byte_fallback_share", "unknown_share")}
        shown = {k: v for k, v in shares.items() if any(v)}
        chart_list.append(charts.bars(
            "tokenizer-aux-fallback", "Byte-fallback and unknown tokens per language", top, shown or shares,
            xlabel="% of tokens", stacked=False,
            caption="series that are zero for every language are left out: " +
                    (", ".join(k for k in shares if k not in shown) or "none")))
    note = html.note(f"Both measured here on the same {len(docs):,} sampled documents dedup kept (the tokenizer "
                     f"stage's training documents left out; texts cut at their first characters as sampled). "
                     f"Auxiliary tokenizer: {aux}.")
    table = html.details("Figures per source and language, both tokenizers", html.table(head, rows))
    return note + html.grid(chart_list) + table, chart_list


def render(rin: ReportInput) -> html.Section | None:
    analysis = as_dict(rin.run.stats("tokenizer").get("analysis"))
    if not analysis and rin.aux_tokenizer is None:
        return None
    body: list[str] = []
    chart_list: list[charts.Chart] = []
    if analysis:
        table, part = _stage_part(analysis)
        body += ["<h3>The run's tokenizer on held-out text</h3>",
                 html.note("Measured by the tokenizer stage on documents held out of its training sample; 'own "
                           "tokenizer' is one trained on that source alone, for comparison."),
                 html.grid(part), html.details("Figures per source and language", table, open_=False)]
        chart_list += part
    if rin.aux_tokenizer is not None:
        body.append("<h3>Compared with an auxiliary tokenizer</h3>")
        text, part = _compare_part(rin, rin.aux_tokenizer)
        body.append(text)
        chart_list += part
    return html.Section("tokenizer", "Tokenizer analysis", "".join(body), chart_list)
