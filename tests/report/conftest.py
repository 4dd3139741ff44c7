"""Fixtures of the report tests: one small finished run per session, and its report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.report.fixture import build_run


@pytest.fixture(scope="session")
def report_run(tmp_path_factory) -> Path:
    """A run folder with real curate, dedup, tokenizer and tokenize outputs, pretrain metrics, evaluate results."""
    return build_run(tmp_path_factory.mktemp("report-run"))


@pytest.fixture(scope="session")
def report(report_run):
    """The run's report, with the run's own tokenizer file loaded as the auxiliary one."""
    from lmhpc.report import build_report

    return build_report(report_run, aux_tokenizer=report_run / "tokenizer" / "tokenizer.json", budget=400)
