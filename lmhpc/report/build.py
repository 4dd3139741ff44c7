"""Build the report of a run: sample its documents, render every section, write one self-contained page.

Outputs in ``runs/<run>/report/``: ``index.html`` (the page) and ``manifest.json`` (its sections and charts,
how the documents were sampled, and any section that could not be built). A section that fails is replaced by
a note naming the error, so the rest of the page is still written.
"""

from __future__ import annotations

import importlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from lmhpc.fsutil import write_json, write_text
from lmhpc.report import html
from lmhpc.report.context import ReportInput
from lmhpc.report.docs import collect
from lmhpc.report.run import RunFolder, as_dict
from lmhpc.report.sections import SECTIONS

log = logging.getLogger("lmhpc.report")
REPORT_DIR = "report"


@dataclass
class Report:
    """What was written and what went wrong."""

    path: Path
    sections: list[html.Section] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # section module -> error


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, aux_tokenizer: str | Path | None = None,
                 budget: int = 4000, seed: int | None = None) -> Report:
    """Write the report of the run folder ``run_dir`` (default output: ``<run_dir>/report/``)."""
    started = time.time()
    run = RunFolder(Path(run_dir))
    if not run.path.is_dir():
        raise FileNotFoundError(f"no run folder {run.path}")
    config = run.config()
    if seed is None:
        seed = int(as_dict(config.get("run")).get("seed") or 0)
    samples = collect(run, budget, seed)
    rin = ReportInput(run=run, samples=samples, seed=seed, budget=budget,
                      aux_tokenizer=Path(aux_tokenizer) if aux_tokenizer else None, config=config)
    out = Path(out_dir) if out_dir else run.path / REPORT_DIR
    report = Report(out / "index.html")
    for module in SECTIONS:
        name = module.rsplit(".", 1)[1]
        try:
            section = importlib.import_module(module).render(rin)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            log.error("report section %s failed:\n%s", name, traceback.format_exc())
            report.errors[name] = f"{type(e).__name__}: {e}"
            section = html.Section(name, name.capitalize(), html.missing(f"this section could not be built: "
                                                                         f"{type(e).__name__}: {e}"))
        if section is not None:
            report.sections.append(section)
    stages = ", ".join(run.stages()) or "no stage output"
    subtitle = f"{run.path} · stages: {stages} · built in {time.time() - started:.1f} s"
    write_text(report.path, html.page(f"lmhpc report: {run.name}", subtitle, report.sections), fsync=False)
    write_json(out / "manifest.json", {
        "run": str(run.path.resolve()),
        "sections": [{"id": s.id, "title": s.title, "charts": [c.name for c in s.charts]} for s in report.sections],
        "sampled": {"curate_output": samples.kept_note.describe(), "curate_dropped": samples.dropped_note,
                    "seed": seed, "budget": budget},
        "errors": report.errors,
    }, fsync=False)
    return report
