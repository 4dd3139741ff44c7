"""The sections of the report, in page order: each module's ``render(rin) -> Section | None`` builds one
(``None`` when the run holds nothing it could show)."""

from __future__ import annotations

SECTIONS = (
    "lmhpc.report.sections.overview",
    "lmhpc.report.sections.sources",
    "lmhpc.report.sections.domains",
    "lmhpc.report.sections.examples",
    "lmhpc.report.sections.distributions",
    "lmhpc.report.sections.scores",
    "lmhpc.report.sections.dedup",
    "lmhpc.report.sections.docmap",
    "lmhpc.report.sections.tokenizer",
    "lmhpc.report.sections.training",
    "lmhpc.report.sections.evaluation",
    "lmhpc.report.sections.ablation",
)
