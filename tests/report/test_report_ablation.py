"""The report's Ablations section: the comparison table (escaped), the differences beyond their standard error
marked and listed, its charts; no section for a run without an ablation."""

from __future__ import annotations

import json

import pytest

from tests.report.fixture import ABLATION_SOURCE

pytestmark = pytest.mark.xdist_group("report")


def _section(report):
    return next(s for s in report.sections if s.id == "ablation")


def test_ablation_section_table_marks_and_charts(report, report_run):
    section = _section(report)
    assert [c.name for c in section.charts] == ["ablation-diffs", "ablation-data"]
    comparison = json.loads((report_run / "ablate" / "comparison.json").read_text())
    exceeding = {(d["variant"], d["metric"], d["direction"]) for d in comparison["exceeding"]}
    assert exceeding == {("without_c4", "heldout bpb", "worse"), ("without_dedup", "heldout bpb", "better"),
                         ("without_dedup", "piqa acc", "better")}
    body = section.body
    # one mark per difference beyond its standard error, none for the others
    assert body.count('<mark class="exceeds"') == len(exceeding)
    assert '<mark class="exceeds" data-direction="worse">Δ +0.1500 ± 0.0424</mark>' in body
    assert "Δ -0.0100 ± 0.0283" in body and "Δ -0.0100 ± 0.0283</mark>" not in body  # within: not marked
    # the paired errors: only_web's small held-out difference exceeds its paired error alone
    paired = {(d["variant"], d["metric"]) for d in comparison["exceeding_paired"]}
    assert ("only_web", "heldout bpb") in paired and ("only_web", "heldout bpb") not in {e[:2] for e in exceeding}
    assert body.count('<u class="exceeds-paired"') == len(paired)
    assert '<ul class="exceeding_paired"><li>without_c4: heldout bpb' in body
    for variant in ("baseline", "without_c4", "without_dedup", "only_web"):
        assert f"<td>{variant}</td>" in body
    # a source name holding markup is text
    assert ABLATION_SOURCE not in body and "&lt;i&gt;web&lt;/i&gt;" in body
    page = report.path.read_text()
    assert '<section id="ablation">' in page and 'data-chart="ablation-diffs"' in page
    manifest = json.loads((report.path.parent / "manifest.json").read_text())
    assert {"id": "ablation", "title": "Ablations", "charts": ["ablation-diffs", "ablation-data"]} \
        in manifest["sections"]


def test_no_ablation_section_without_a_comparison(tmp_path):
    from lmhpc.report.context import ReportInput
    from lmhpc.report.docs import Samples
    from lmhpc.report.run import RunFolder
    from lmhpc.report.sections import ablation

    run = RunFolder(tmp_path)
    rin = ReportInput(run=run, samples=Samples())
    assert ablation.render(rin) is None
    (tmp_path / "ablate").mkdir()
    (tmp_path / "ablate" / "comparison.json").write_text("{}")
    section = ablation.render(rin)
    assert section is not None and "holds no comparison" in section.body and not section.charts
