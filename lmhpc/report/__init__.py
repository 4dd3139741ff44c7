"""The run report: one self-contained HTML page (``runs/<run>/report/index.html``) that a person reads in a
browser to judge the data and the model — what each stage kept and dropped, per source, domain and reason,
distributions with their thresholds, a map of the documents, the tokenizer's figures and the evaluation
scores. Everything it shows is read from the stage folders or computed from a bounded, seeded sample of
their documents; the page loads nothing from the network and runs no script.
"""

from __future__ import annotations

from lmhpc.report.build import build_report

__all__ = ["build_report"]
