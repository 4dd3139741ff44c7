"""Evaluation: every score of every evaluated checkpoint (or model), with standard errors, and across steps."""

from __future__ import annotations

from lmhpc.report import charts, html
from lmhpc.report.context import ReportInput
from lmhpc.report.evaluation import Results, read_results

MAX_PANELS = 12
COLS = 3


def _fmt(results: Results, model: str, column: str) -> html.Cell:
    score = results.cells.get((model, column))
    if score is None:
        return html.Cell("–", True)
    text = f"{score.value:.4f}" if abs(score.value) < 100 else f"{score.value:,.1f}"
    return html.Cell(text + (f" ± {score.stderr:.4f}" if score.stderr is not None else ""), True)


def _chart(results: Results) -> charts.Chart | None:
    columns = [c for c in results.columns if sum((m, c) in results.cells for m in results.models) >= 1][:MAX_PANELS]
    if not columns:
        return None
    steps = results.steps()
    x = steps if steps else list(range(len(results.models)))
    cols = min(COLS, len(columns))
    rows = (len(columns) + cols - 1) // cols
    fig, axes = charts.figure(3.3 * cols, 2.4 * rows, rows, cols)
    for i, column in enumerate(columns):
        ax = axes[i // cols, i % cols]
        pts = [(xv, results.cells[(m, column)]) for xv, m in zip(x, results.models) if (m, column) in results.cells]
        ax.errorbar([p[0] for p in pts], [p[1].value for p in pts],
                    yerr=[p[1].stderr or 0.0 for p in pts], marker="o", capsize=3, color=charts.PALETTE[i % 10])
        ax.set_title(column)
        if steps:
            ax.set_xlabel("training step")
        else:
            ax.set_xticks(x, [charts.short(m, 14) for m in results.models], rotation=30, ha="right")
    for j in range(len(columns), rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return charts.render(fig, "evaluation-scores", "Scores across checkpoints" if steps else "Scores per model",
                         "error bars: one standard error", wide=cols > 1)


def render(rin: ReportInput) -> html.Section | None:
    path = rin.run.stage_dir("evaluate") / "results.json"
    if not path.is_file():
        return None
    results = read_results(path)
    if not results.models:
        return html.Section("evaluation", "Evaluation", html.missing(f"{path} holds no result this report can read"))
    chart = _chart(results)
    chart_list = [chart] if chart else []
    table = html.table(["model"] + results.columns,
                       [[m] + [_fmt(results, m, c) for c in results.columns] for m in results.models])
    body = html.note("From evaluate/results.json; ± one standard error.") + html.grid(chart_list) + table
    return html.Section("evaluation", "Evaluation", body, chart_list)
