"""The report's page and figures, checked against the stage outputs they come from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lmhpc.report.docs import DEDUP_DROP, KEPT, collect, sample_dropped
from lmhpc.report.flows import flows
from lmhpc.report.run import RunFolder
from lmhpc.report.shards import iter_records, shard_files
from tests.report.fixture import SECTIONS, config

pytestmark = pytest.mark.xdist_group("report")


def test_every_section_is_built_without_error(report):
    assert report.errors == {}
    assert [s.id for s in report.sections] == list(SECTIONS)
    manifest = json.loads((report.path.parent / "manifest.json").read_text())
    assert [s["id"] for s in manifest["sections"]] == list(SECTIONS)
    assert manifest["errors"] == {}


def test_page_is_self_contained(report):
    page = report.path.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith(("data:image/svg+xml;base64,", "data:image/png;base64,", "#")) for s in sources)
    assert "http://" not in page.split("<main>")[0]  # nothing in the head loads from anywhere


def test_figures_match_the_stage_stats(report_run, report):
    run = RunFolder(report_run)
    curate, dedup, tokenize = run.stats("curate"), run.stats("dedup"), run.stats("tokenize")
    page = report.path.read_text(encoding="utf-8")
    for n in (curate["docs_in"], curate["docs_out"], dedup["docs_out"]):
        assert f'<div class="v">{n:,}</div>' in page
    samples = collect(run, budget=10_000, seed=1)
    rows = {(f.stage, f.source): f for f in flows(_input(run, samples))}
    for source, sub in curate["per_source"].items():
        assert (rows["curate", source].docs_in, rows["curate", source].docs_out) == (sub["docs_in"], sub["docs_out"])
    for source, sub in tokenize["per_source"].items():
        assert rows["dedup", source].docs_out == sub["docs"]
        assert rows["dedup", source].bytes_out.value == sub["bytes"] and rows["dedup", source].bytes_out.kind == "exact"
    # the whole output was sampled, so curate's text out is measured, not estimated
    text_bytes: dict[str, int] = {}
    for path in shard_files(report_run / "curate" / "data"):
        for _, rec in iter_records(path):
            text_bytes[rec["source"]] = text_bytes.get(rec["source"], 0) + len(rec["text"].encode())
    for source, n in text_bytes.items():
        assert rows["curate", source].bytes_out.kind == "exact"
        assert rows["curate", source].bytes_out.value == pytest.approx(n, rel=1e-9)


def _input(run: RunFolder, samples):
    from lmhpc.report.context import ReportInput

    return ReportInput(run=run, samples=samples, config=run.config())


def test_sample_marks_what_dedup_dropped(report_run):
    run = RunFolder(report_run)
    samples = collect(run, budget=10_000, seed=1)
    dropped = {rec["id"] for p in shard_files(report_run / "dedup" / "dropped") for _, rec in iter_records(p)}
    assert dropped and {d.id for d in samples.kept if d.status == DEDUP_DROP} == dropped
    assert sum(d.status == KEPT for d in samples.kept) == run.stats("dedup")["docs_out"]
    small = collect(run, budget=20, seed=1)
    assert 0 < len(small.kept) <= 20 and not small.kept_note.complete
    assert [d.id for d in collect(run, budget=20, seed=1).kept] == [d.id for d in small.kept]
    assert [d.id for d in collect(run, budget=20, seed=2).kept] != [d.id for d in small.kept]


def test_drops_are_sampled_from_dropped_folder_when_curate_wrote_it(tmp_path):
    from lmhpc.config import load_config
    from lmhpc.runner import run_stage

    path = config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["run"]["stages"] = ["curate"]
    data["curate"]["write_dropped"] = True
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    assert run_stage(cfg, "curate") == 0
    run = RunFolder(Path(cfg.run_dir))
    docs, note, complete = sample_dropped(run, budget=1000, seed=0)
    assert complete and "dropped/" in note
    counts: dict[str, int] = {}
    for d in docs:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    assert counts == run.stats("curate")["dropped"]
    assert all(d.chars == len(d.text) for d in docs if d.chars < 4000)


def test_evaluation_table_has_each_checkpoint_with_standard_errors(report):
    section = next(s for s in report.sections if s.id == "evaluation")
    assert [c.name for c in section.charts] == ["evaluation-scores"]
    for step in (20, 40, 60):
        assert f"pretrain/step-{step}" in section.body
    assert "0.3100 ± 0.0300" in section.body and "hellaswag acc_norm" in section.body


def test_auxiliary_tokenizer_is_measured_on_the_same_documents(report_run):
    """The run's sentencepiece model and its own tokenizer.json, read as a Hugging Face file, are one
    tokenizer: every figure agrees, byte fallback included."""
    from lmhpc.exchange.tokenizer import load_tokenizer
    from lmhpc.report.tokens import measure, piece_flags

    sp = load_tokenizer(report_run / "tokenizer")
    hf = load_tokenizer(report_run / "tokenizer" / "tokenizer.json")
    assert len(piece_flags(sp).byte_ids) == len(piece_flags(hf).byte_ids) == 256
    docs = [("prose", "ja", "東京は日本の首都です。🙂 ümlaut"), ("code", "unknown", "def f(x):\n    return x ** 2\n")]
    a, b = measure(sp, docs), measure(hf, docs)
    for source in ("prose", "code"):
        assert a.by_source[source].figures() == b.by_source[source].figures()
    assert a.by_source["prose"].byte_tokens > 0  # characters the small vocabulary lacks fall back to bytes
    assert a.total.unk_tokens == 0


def test_report_command(report_run, tmp_path, capsys):
    from lmhpc.cli import main

    run = tmp_path / "runs" / "only-curate"
    run.mkdir(parents=True)
    for name in ("stats.json", "config.json", "DONE"):
        (run / "curate").mkdir(exist_ok=True)
        (run / "curate" / name).write_bytes((report_run / "curate" / name).read_bytes())
    assert main(["report", str(run), "--sample-docs", "10"]) == 0
    assert (run / "report" / "index.html").is_file()
    assert "report:" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(run), "--aux-tokenizer", str(tmp_path / "nothing")]) == 2
