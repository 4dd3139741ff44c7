"""Training data and training: the tokenized blend per source, and pretrain's loss and throughput."""

from __future__ import annotations

import math

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.run import as_dict, as_int, read_json, read_jsonl

MAX_POINTS = 20000


def _blend(rin: ReportInput) -> tuple[str, list[charts.Chart]]:
    blend = as_dict(read_json(rin.run.stage_dir("tokenize") / "blend.json"))
    sources = as_dict(blend.get("sources"))
    if not sources:
        return "", []
    total = sum(as_int(as_dict(v).get("tokens")) for v in sources.values())
    names = sorted(sources)
    rows = [[s, as_int(as_dict(sources[s]).get("docs")), as_int(as_dict(sources[s]).get("tokens")),
             html.share(as_int(as_dict(sources[s]).get("tokens")), total),
             html.Cell(f"{100 * float(as_dict(sources[s]).get('weight') or 0):.1f}%", True)] for s in names]
    chart = charts.bars("training-blend", "Training blend: tokens and sampling weight per source", names,
                        {"share of tokens %": [100 * as_int(as_dict(sources[s]).get("tokens")) / total if total else 0
                                               for s in names],
                         "blend weight %": [100 * float(as_dict(sources[s]).get("weight") or 0) for s in names]},
                        stacked=False, xlabel="%", caption=f"mix '{blend.get('mix', '?')}', {total:,} tokens in all")
    table = html.table(["source", "documents", "tokens", "share of tokens", "blend weight"], rows)
    return table, [chart]


def _curves(rin: ReportInput) -> list[charts.Chart]:
    rows = read_jsonl(rin.run.stage_dir("pretrain") / "metrics.jsonl", limit=MAX_POINTS)
    points = [(r["step"], r["loss"], r.get("tokens_per_s")) for r in rows
              if isinstance(r.get("step"), int) and isinstance(r.get("loss"), int | float) and math.isfinite(r["loss"])]
    if not points:
        return []
    fig, axes = charts.figure(6.4, 3.0, 1, 2)
    steps = [p[0] for p in points]
    axes[0, 0].plot(steps, [p[1] for p in points], color=charts.PALETTE[0])
    axes[0, 0].set_xlabel("step")
    axes[0, 0].set_ylabel("training loss")
    speed = [(p[0], p[2]) for p in points if isinstance(p[2], int | float)]
    if speed:
        axes[0, 1].plot([s for s, _ in speed], [v for _, v in speed], color=charts.PALETTE[1])
    axes[0, 1].set_xlabel("step")
    axes[0, 1].set_ylabel("tokens per second")
    return [charts.render(fig, "training-loss", "Pretraining: loss and throughput",
                          f"{len(points):,} logged steps from pretrain/metrics.jsonl")]


def render(rin: ReportInput) -> html.Section | None:
    table, chart_list = _blend(rin)
    chart_list += _curves(rin)
    if not chart_list:
        return None
    return html.Section("training", "Training data and training", html.grid(chart_list) + table, chart_list)
