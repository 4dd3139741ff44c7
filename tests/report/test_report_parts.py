"""The report's pieces on their own: thresholds, the document map, the results reader, escaping, sampling."""

from __future__ import annotations

import json

import numpy as np

from lmhpc.curate.filters.config import FiltersConfig
from lmhpc.report import html
from lmhpc.report.docmap import build_map
from lmhpc.report.evaluation import read_results
from lmhpc.report.shards import iter_records, sample_records
from lmhpc.report.thresholds import bounds, filters_for
from tests.curate.curate_corpus import prose


def _filters(**override) -> dict:
    from lmhpc.config import to_dict

    data = to_dict(FiltersConfig(), redact=False)
    data.update(override)
    return data


def test_thresholds_follow_the_config_and_per_source_overrides():
    filters = _filters(per_source={"license": {"gopher_quality": {"min_alpha_words_ratio": 0.5}},
                                   "code": {"code": {"enabled": True}, "gopher_quality": {"enabled": False}}})
    assert bounds(filters, "gopher_quality", "alpha_words_ratio") == [("min_alpha_words_ratio", "min", 0.8)]
    assert bounds(filters_for(filters, "license"), "gopher_quality", "alpha_words_ratio")[0][2] == 0.5
    assert bounds(filters, "gopher_quality", "words") == [("min_doc_words", "min", 50.0),
                                                          ("max_doc_words", "max", 100000.0)]
    assert bounds(filters, "gopher_repetition", "dup_5_gram") == [("dup_n_grams.5", "max", 0.15)]
    assert bounds(filters, "gopher_repetition", "top_2_gram") == [("top_n_grams.2", "max", 0.2)]
    assert bounds(filters, "code", "alnum_fraction") == []  # the code filter is off, except for code
    assert bounds(filters_for(filters, "code"), "code", "alnum_fraction") == [("min_alnum_fraction", "min", 0.25)]
    assert bounds(filters_for(filters, "code"), "gopher_quality", "words") == []
    filters["fineweb"]["line_punct_thr"] = None  # a rule turned off draws no line
    assert bounds(filters, "fineweb", "line_punct_ratio") == []


def test_document_map_separates_two_kinds_of_text():
    code = [f"def f{i}(x):\n    return [y * {i} for y in range(x) if y % 2]\n\nclass C{i}:\n    pass\n"
            for i in range(40)]
    texts = [prose(i) for i in range(40)] + code
    m = build_map(texts, clusters=2, seed=3)
    assert m is not None and m.xy.shape == (80, 2)
    first, second = m.labels[:40], m.labels[40:]
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0]
    assert any(t in ("return", "def", "range", "class") for t in m.top_terms[second[0]])
    again = build_map(texts, clusters=2, seed=3)
    assert np.array_equal(m.labels, again.labels) and np.allclose(m.xy, again.xy)
    assert build_map(["too few"] * 5) is None


def test_results_reader_skips_what_it_cannot_read(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"models": [
        {"name": "pretrain/step-10", "tasks": {"arc": {"metrics": ["acc"], "acc": 0.4, "acc_stderr": 0.05}},
         "perplexity": {"heldout": {"perplexity": 12.5, "bits_per_byte": 1.1}}},
        "not a row",
        {"name": "pretrain/step-20", "tasks": {"arc": {"acc": "n/a", "acc_norm": 0.5}}, "perplexity": []},
    ]}))
    results = read_results(path)
    assert results.models == ["pretrain/step-10", "pretrain/step-20"] and results.steps() == [10, 20]
    assert results.cells[("pretrain/step-10", "arc acc")].stderr == 0.05
    assert ("pretrain/step-20", "arc acc") not in results.cells
    assert results.cells[("pretrain/step-20", "arc acc_norm")].value == 0.5
    assert results.cells[("pretrain/step-10", "heldout perplexity")].value == 12.5
    path.write_text("{truncated")
    assert read_results(path).models == []


def test_escaping_covers_markup_quotes_and_lone_surrogates():
    text = "<script>alert('x')</script> \"q\" & \ud800"
    out = html.esc(text)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out
    assert out.encode("utf-8")  # a lone surrogate cannot be written as UTF-8; it is replaced
    doc = html.document("t", "m", text, kept=True)
    assert "<script>" not in doc and "&lt;script&gt;" in doc


def test_sample_is_bounded_spread_and_seeded(tmp_path):
    from lmhpc.data.documents import Document
    from lmhpc.data.writers import ShardWriter

    sizes = [5, 300, 40]
    for k, n in enumerate(sizes):
        with ShardWriter(tmp_path, f"part-{k:05d}", max_bytes=1 << 20) as w:
            for i in range(n):
                w.write(Document(id=f"{k}-{i}", text=f"text {i}", source=f"s{k}"))
    paths = sorted(tmp_path.glob("part-*"))
    picked, note = sample_records(paths, budget=60, seed=1)
    assert len(picked) <= 60 and note.taken == len(picked)
    per_shard = [sum(1 for k, _, _ in picked if k == s) for s in range(3)]
    assert per_shard[0] == 5 and per_shard[1] > 20 and per_shard[2] > 0  # a small shard's share goes on
    assert all(rec["id"] == f"{k}-{i}" for k, i, rec in picked)  # record index = line among documents
    assert [r["id"] for _, _, r in sample_records(paths, 60, seed=1)[0]] == [r["id"] for _, _, r in picked]
    assert len(sample_records(paths, budget=2, seed=1)[0]) == 2
    everything, note = sample_records(paths, budget=10_000, seed=1)
    assert len(everything) == sum(sizes) and note.complete and "all" in note.describe()
    assert [i for i, _ in iter_records(paths[0])] == list(range(5))
