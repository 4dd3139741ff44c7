"""Ablations: the probe scores of every data variant against the baseline (``ablate/comparison.json``), the
differences beyond their standard error marked, a plot of the differences and one of each variant's data."""

from __future__ import annotations

from typing import Any

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.run import read_json

MAX_PANELS = 12
COLS = 3
BETTER, WORSE, WITHIN = "#2a9d8f", "#e76f51", "#8a94a3"


def _score_cell(entry: dict[str, Any]) -> html.Cell:
    value = entry.get("value")
    if value is None:
        return html.Cell("–", True)
    text = f"{value:.4f}" + (f" ± {entry['stderr']:.4f}" if entry.get("stderr") is not None else "")
    out = html.esc(text)
    if entry.get("diff") is not None:
        delta = f"Δ {entry['diff']:+.4f}" + (f" ± {entry['diff_stderr']:.4f}" if entry.get("diff_stderr") is not None
                                             else "")
        delta_html = html.esc(delta)
        if entry.get("exceeds"):
            delta_html = (f'<mark class="exceeds" data-direction="{html.esc(entry.get("direction", ""))}">'
                          f"{delta_html}</mark>")
        out += "<br>" + delta_html
        if entry.get("paired_stderr") is not None:
            paired = html.esc(f"paired ± {entry['paired_stderr']:.4f}")
            if entry.get("exceeds_paired"):
                paired = (f'<u class="exceeds-paired" data-direction="{html.esc(entry.get("direction", ""))}">'
                          f"{paired}</u>")
            out += "<br>" + paired
    return html.Cell(out, True)


def _diff_chart(comparison: dict[str, Any]) -> charts.Chart | None:
    metrics = [m["name"] for m in comparison.get("metrics", [])][:MAX_PANELS]
    others = [v for v in comparison.get("variants", []) if v.get("name") != comparison.get("baseline")]
    if not metrics or not others:
        return None
    cols = min(COLS, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = charts.figure(3.4 * cols, 0.6 + (0.32 * len(others) + 0.9) * rows, rows, cols)
    names = [str(v.get("name")) for v in others]
    for i, metric in enumerate(metrics):
        ax = axes[i // cols, i % cols]
        for y, v in enumerate(others):
            entry = v.get("scores", {}).get(metric, {})
            if entry.get("diff") is None:
                continue
            color = WITHIN if not entry.get("exceeds") else BETTER if entry.get("direction") == "better" else WORSE
            ax.errorbar([entry["diff"]], [y], xerr=[entry.get("diff_stderr") or 0.0], fmt="o", color=color,
                        capsize=3)
            if entry.get("paired_stderr") is not None:
                ax.errorbar([entry["diff"]], [y + 0.18], xerr=[entry["paired_stderr"]], fmt="none",
                            color="#1d2430", capsize=2, linewidth=1.6 if entry.get("exceeds_paired") else 0.8)
        ax.axvline(0.0, color="#1d2430", linewidth=0.8)
        ax.set_yticks(range(len(names)), [charts.short(n, 22) if i % cols == 0 else "" for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_title(metric)
        ax.grid(axis="y", visible=False)
    for j in range(len(metrics), rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return charts.render(fig, "ablation-diffs", "Difference to the baseline per variant",
                         "variant - baseline; coloured error bars: the combined standard error (green: better beyond "
                         "it, red: worse beyond it, grey: within it); dark bars below: the paired standard error "
                         "(per-item differences; thick where the difference exceeds it); bpb: lower is better",
                         wide=cols > 1)


def _data_chart(comparison: dict[str, Any]) -> charts.Chart | None:
    variants = comparison.get("variants", [])
    sources = sorted({s for v in variants for s in (v.get("sources") or {})})
    if not variants or not sources:
        return None
    series = {s: [float((v.get("sources") or {}).get(s, {}).get("tokens", 0)) for v in variants] for s in sources}
    return charts.bars("ablation-data", "Tokens of each variant by source", [str(v.get("name")) for v in variants],
                       series, xlabel="tokens", caption="what each probe could train on (the budget is the same "
                       "for all; a smaller variant is repeated more)")


def render(rin: ReportInput) -> html.Section | None:
    path = rin.run.stage_dir("ablate") / "comparison.json"
    if not path.is_file():
        return None
    comparison = read_json(path)
    if not isinstance(comparison, dict) or not comparison.get("variants"):
        return html.Section("ablation", "Ablations", html.missing(f"{path} holds no comparison this report can read"))
    metrics = [m["name"] for m in comparison.get("metrics", [])]
    rows = []
    for v in comparison["variants"]:
        scores = v.get("scores", {})
        rows.append([v.get("name"), v.get("description"), v.get("docs"), v.get("tokens"), v.get("final_loss")]
                    + [_score_cell(scores.get(m, {})) for m in metrics])
    table = html.table(["variant", "data", "docs", "tokens", "final train loss"] + metrics, rows)
    setup = comparison.get("setup", {})
    verdict = ""
    for key, se_key, title in (("exceeding", "diff_stderr", "combined"), ("exceeding_paired", "paired_stderr",
                                                                          "paired")):
        found = comparison.get(key, [])
        if not found:
            verdict += html.note(f"No difference to the baseline exceeds its {title} standard error.")
            continue
        items = "".join(f"<li>{html.esc(d['variant'])}: {html.esc(d['metric'])} {d['diff']:+.4f} ± "
                        f"{d[se_key]:.4f} ({html.esc(d['direction'])})</li>" for d in found)
        verdict += f'<h3>Differences beyond one {title} standard error</h3><ul class="{key}">{items}</ul>'

    chart_list = [c for c in (_diff_chart(comparison), _data_chart(comparison)) if c is not None]
    body = (html.note(f"From ablate/comparison.json: the same probe ({setup.get('steps')} steps, "
                      f"{setup.get('token_budget')} tokens, seed {setup.get('seed')}) trained on each variant of the "
                      "data; ± one standard error; Δ: variant - baseline ± the combined standard error (highlighted "
                      "where Δ exceeds it) and ± the paired one, from the per-item differences (underlined where Δ "
                      "exceeds it).")
            + html.grid(chart_list) + table + verdict)
    return html.Section("ablation", "Ablations", body, chart_list)
