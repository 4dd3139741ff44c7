"""Model-based filters: the project's own n-gram language model (perplexity) and a fastText classifier."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from curate_corpus import SENTENCES, prose, write_jsonl

from lmhpc.config import build, load_config
from lmhpc.curate import classifier, ngram_lm
from lmhpc.curate.filters.config import ClassifierFilterConfig, PerplexityFilterConfig
from lmhpc.curate.filters.perplexity import PerplexityFilter
from lmhpc.curate.filters.text import TextView
from lmhpc.data.documents import Document
from lmhpc.runner import run_stage
from tests.helpers import import_peer

GIBBERISH = "zq xv kkp lorp vvb qwz trs pl mmn zzk bq wx " * 4


def test_ngram_model_by_hand(tmp_path: Path) -> None:
    out = tmp_path / "tiny.arpa"
    ngram_lm.train(["a b", "a b", "a c"], order=2, out=out)
    model = ngram_lm.ArpaModel(out)
    assert model.order == 2
    # probabilities of every word after a context sum to one (over the vocabulary, </s> and <unk>)
    for history in [(ngram_lm.BOS,), ("a",), ("b",)]:
        total = sum(10 ** model._logprob(history, w) for w in ["a", "b", "c", ngram_lm.EOS, ngram_lm.UNK])
        assert total == pytest.approx(1.0, abs=1e-4)
    # "a b" was seen twice, "a c" once
    assert model._logprob(("a",), "b") > model._logprob(("a",), "c")
    assert ngram_lm.perplexity(model, "") == math.inf


def test_ngram_model_is_deterministic_and_separates_text(tmp_path: Path) -> None:
    reference = [prose(i) for i in range(60)]
    a, b = tmp_path / "a.arpa", tmp_path / "b.arpa"
    ngram_lm.train(reference, 3, a)
    ngram_lm.train(reference, 3, b)
    assert a.read_bytes() == b.read_bytes()
    model = ngram_lm.load_model(a)
    in_domain = ngram_lm.perplexity(model, prose(1000))
    off_domain = ngram_lm.perplexity(model, GIBBERISH)
    assert in_domain < off_domain / 10
    f = PerplexityFilter(PerplexityFilterConfig(enabled=True, model=str(a), max=in_domain * 3), a)
    assert f(TextView(Document("good", prose(1001)))) is None
    assert f(TextView(Document("bad", GIBBERISH))) == "perplexity/perplexity_too_high"
    # bounds per language (the language filter writes metadata.language earlier in the chain)
    cfg = build(PerplexityFilterConfig, {"enabled": True, "model": str(a), "max": None,
                                         "per_language": {"en": {"max": 1.0}}})
    assert PerplexityFilter(cfg, a)(TextView(Document("fr", prose(1003), metadata={"language": "fr"}))) is None
    doc = Document("en", prose(1002), metadata={"language": "en"})
    assert PerplexityFilter(cfg, a)(TextView(doc)) == "perplexity/perplexity_too_high"
    assert doc.metadata["scores"]["perplexity"]["perplexity"] == pytest.approx(in_domain, rel=0.5)


def test_ngram_command_line(tmp_path: Path, capsys) -> None:
    write_jsonl(tmp_path / "ref.jsonl", [{"text": prose(i)} for i in range(20)])
    (tmp_path / "ref.txt").write_text("\n".join(SENTENCES))
    model = tmp_path / "m.arpa"
    assert ngram_lm.main(["train", str(tmp_path / "ref.jsonl"), str(tmp_path / "ref.txt"), "--out", str(model)]) == 0
    assert json.loads(capsys.readouterr().out)["3-grams"] > 100
    assert ngram_lm.main(["score", str(model), str(tmp_path / "ref.jsonl")]) == 0
    assert len(capsys.readouterr().out.split()) == 20


def bad_text(rng: random.Random) -> str:
    words = ["click", "here", "buy", "now", "cheap", "free", "offer", "win", "casino", "deal", "!!!", "$$$"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))


def test_classifier_trains_reports_and_filters(tmp_path: Path, make_config) -> None:
    rng = random.Random(0)
    good = write_jsonl(tmp_path / "good.jsonl", [{"text": prose(i)} for i in range(150)])
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(bad_text(rng) for _ in range(150)) + "\n")
    model = tmp_path / "quality.bin"
    report = classifier.train([str(good)], [str(bad)], model, holdout=0.2, seed=1)
    assert report["held_out_examples"] > 30
    assert report["labels"]["hq"]["precision"] >= 0.9 and report["labels"]["hq"]["recall"] >= 0.9
    assert json.loads((tmp_path / "quality.bin.report.json").read_text())["accuracy"] == report["accuracy"]
    scores = classifier.predict_scores(classifier.load_fasttext(model), prose(999))
    assert scores["hq"] > 0.5 and set(scores) == {"hq", "lq"}

    write_jsonl(tmp_path / "in" / "web.jsonl",
                [{"id": f"g{i}", "text": prose(500 + i)} for i in range(10)]
                + [{"id": f"b{i}", "text": prose(700 + i) + "\n" + "\n".join(bad_text(rng) + "." for _ in range(30))}
                   for i in range(5)])
    cfg_path = make_config({"run": {"stages": ["curate"]}, "wandb": {"mode": "disabled"}, "curate": {
        "inputs": [{"path": "in/*.jsonl", "source": "web"}],
        "filters": {"gopher_repetition": {"enabled": False}, "gopher_quality": {"enabled": False},
                    "c4": {"enabled": False}, "fineweb": {"enabled": False},
                    "classifier": {"enabled": True, "model": str(model), "keep_labels": {"hq": 0.5}}},
    }})
    cfg = load_config(cfg_path)
    assert run_stage(cfg, "curate") == 0
    stats = json.loads((cfg.run_dir / "curate" / "stats.json").read_text())
    assert stats["docs_out"] == 10 and stats["dropped"] == {"classifier/below_keep_score": 5}


def test_classifier_filter_rejects_unknown_labels(tmp_path: Path) -> None:
    from lmhpc.curate.filters.classifier import ClassifierFilter

    good = write_jsonl(tmp_path / "good.jsonl", [{"text": prose(i)} for i in range(20)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": bad_text(random.Random(i))} for i in range(20)])
    model = tmp_path / "m.bin"
    classifier.train([str(good)], [str(bad)], model, holdout=0.0, epoch=2)
    with pytest.raises(ValueError, match="not in"):
        ClassifierFilter(ClassifierFilterConfig(enabled=True, model=str(model), keep_labels={"great": 0.5}), model)


def test_our_arpa_scoring_matches_kenlm(tmp_path: Path) -> None:
    import_peer("kenlm")
    path = tmp_path / "ref.arpa"
    ngram_lm.train([prose(i) for i in range(40)], 3, path)
    ours, theirs = ngram_lm.ArpaModel(path), ngram_lm.KenlmModel(path)
    for text in (prose(500), GIBBERISH, "the river the river the"):
        for tokens in ngram_lm.document_lines(text):
            assert ours.score_sentence(tokens) == pytest.approx(theirs.score_sentence(tokens), abs=1e-3)
