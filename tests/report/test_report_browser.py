"""The report in a real browser (Debian's headless Chromium): it loads without a console message, every section
and chart is there and drawn, a document holding ``<script>`` shows as text and runs nothing, and a screenshot
is taken. The checks are first shown to catch what they look for, on pages made to fail them."""

from __future__ import annotations

import pytest

from tests.report import browser
from tests.report.fixture import DROPPED_SCRIPT_ID, KEPT_SCRIPT_ID, SCRIPT, SECTIONS

pytestmark = pytest.mark.xdist_group("report")


def test_the_checks_catch_console_errors_and_broken_charts(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                    "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'\"></head><body>"
                    "<section id='a'><img class='chart' data-chart='broken' src='data:image/png;base64,AAAA'></section>"
                    "</body></html>")
    found, _ = browser.browser_check(page, tmp_path)
    assert found["broken"] == ["broken"] and found["sections"] == ["a"]
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<!DOCTYPE html><html><body><script>console.error('boom'); null.x;</script></body></html>")
    _, console = browser.dump_dom(noisy)
    assert any("boom" in m for m in console) and any("Uncaught TypeError" in m for m in console), console


def test_report_loads_cleanly_with_every_section_and_chart(report, tmp_path):
    page = report.path
    dom, console = browser.dump_dom(page)
    assert console == [], console
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom, section
    found, check_console = browser.browser_check(page, tmp_path)
    assert check_console == [], check_console
    expected = [c.name for s in report.sections for c in s.charts]
    assert found["sections"] == [s.id for s in report.sections] == list(SECTIONS)
    assert found["charts"] == expected and len(expected) >= 25, found["charts"]
    assert found["broken"] == [], found["broken"]
    for section in report.sections:
        if section.id != "examples":
            assert section.charts, f"section {section.id} has no chart"


def test_documents_with_markup_show_as_text_and_never_run(report, tmp_path):
    dom, _ = browser.dump_dom(report.path)
    found, _ = browser.browser_check(report.path, tmp_path)
    assert found["injected"] is None and found["title"] == "lmhpc report: r"
    assert found["scripts"] == 1  # the check script alone: the documents' scripts are text
    assert "<script" not in dom.lower()
    escaped = SCRIPT.replace("<", "&lt;").replace(">", "&gt;")
    for doc_id in (KEPT_SCRIPT_ID, DROPPED_SCRIPT_ID):
        start = dom.index(doc_id)
        assert escaped in dom[start : start + 3000], doc_id
    assert "onerror" in dom and "<img src=x" not in dom  # the dropped page's image tag is text too


def test_screenshot(report, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    console = browser.screenshot(report.path, png)
    assert console == [], console
    with Image.open(png) as im:
        assert im.size == (1280, 2000)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # text, tables and charts were drawn, not a blank page
