"""Every heuristic filter against hand-checked documents, and the shared text view."""

from __future__ import annotations

from pathlib import Path

import pytest
from curate_corpus import prose
from hypothesis import given, settings
from hypothesis import strategies as st

from lmhpc.curate.filters.base import result_reason
from lmhpc.curate.filters.c4 import C4QualityFilter, count_sentences
from lmhpc.curate.filters.chain import ChainSet
from lmhpc.curate.filters.code import CodeQualityFilter
from lmhpc.curate.filters.config import (
    C4FilterConfig,
    CodeFilterConfig,
    DomainFilterConfig,
    FiltersConfig,
    FineWebFilterConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageFilterConfig,
    LengthFilterConfig,
)
from lmhpc.curate.filters.domain import DomainFilter, url_host
from lmhpc.curate.filters.fineweb import FineWebQualityFilter
from lmhpc.curate.filters.gopher import (
    GopherQualityFilter,
    GopherRepetitionFilter,
    duplicated_ngram_chars,
    top_ngram_chars,
)
from lmhpc.curate.filters.language import LanguageFilter
from lmhpc.curate.filters.length import LengthFilter
from lmhpc.curate.filters.text import TextView, split_words
from lmhpc.data.documents import Document

GOOD = prose(1)


def verdict(f, text: str, url: str | None = None) -> str | None:
    """The filter's drop reason for ``text`` (None: kept)."""
    return result_reason(f.filter(TextView(Document("d", text, "s", url))))


# --------------------------------------------------------------------------------------------
# words


@pytest.mark.parametrize(
    ("text", "words"),
    [  # what a blank spaCy "en" tokenizer gives (checked by hand against spaCy 3.8)
        ("I don't know, Mr. Smith.", ["I", "do", "n't", "know", ",", "Mr.", "Smith", "."]),
        ("We cannot go; it's 10km away (approx.) and costs $100.",
         ["We", "can", "not", "go", ";", "it", "'s", "10", "km", "away", "(", "approx", ".", ")", "and", "costs",
          "$", "100", "."]),
        ("See https://example.org/a?b=1. Or mail a.b@example.org!",
         ["See", "https://example.org/a?b=1", ".", "Or", "mail", "a.b@example.org", "!"]),
        ("A well-known bash-5.0 fix: foo/bar and and/or x=y",
         ["A", "well", "-", "known", "bash-5.0", "fix", ":", "foo", "/", "bar", "and", "and/or", "x", "=", "y"]),
        ("U.S. troops, e.g. the Army... Wait...", ["U.S.", "troops", ",", "e.g.", "the", "Army", "...", "Wait", "..."]),
        ('"Quoted," she said—then left.', ['"', "Quoted", ",", '"', "she", "said", "—", "then", "left", "."]),
        ("dont im Ive 3.14 1,000,000 #tag <code>x</code>",
         ["do", "nt", "i", "m", "I", "ve", "3.14", "1,000,000", "#", "tag", "<", "code", ">", "x</code", ">"]),
    ],
)
def test_word_split_follows_spacy(text: str, words: list[str]) -> None:
    assert split_words(text) == words


# --------------------------------------------------------------------------------------------
# Gopher quality


def test_gopher_quality_keeps_prose_and_scores_it() -> None:
    f = GopherQualityFilter(GopherQualityConfig())
    doc = Document("d", GOOD)
    assert f(TextView(doc)) is None
    scores = doc.metadata["scores"]["gopher_quality"]
    assert scores["words"] == len([w for w in split_words(GOOD) if any(c.isalnum() for c in w)])
    assert scores["stop_words"] >= 2


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("only a few words here, the end.", "short_doc"),
        (" ".join(["extraordinarily"] * 40 + ["the", "of"] * 5), "above_avg_word_length"),
        (" ".join(["a", "b", "c", "the", "of"] * 20), "below_avg_word_length"),
        (" ".join(["#tag the word of"] * 20), "too_many_hashes"),
        (" ".join(["wait... the sound of"] * 20), "too_many_ellipsis"),
        ("\n".join(["- the river and the sea of old"] * 19 + ["The end of the list is here."]), "too_many_bullets"),
        ("\n".join(["Wonderful mountains surrounded the beautiful villages of the region..."] * 4
                   + ["Travellers remember the wonderful mountains and the beautiful villages."] * 6),
         "too_many_end_ellipsis"),
        (" ".join(["12345 67890 11111 river the"] * 20), "below_alpha_threshold"),
        (" ".join(["river stone bridge market town"] * 12), "not_enough_stop_words"),
    ],
)
def test_gopher_quality_rules(text: str, reason: str) -> None:
    assert verdict(GopherQualityFilter(GopherQualityConfig()), text) == reason


def test_gopher_quality_rule_can_be_turned_off() -> None:
    text = " ".join(["river stone bridge market town"] * 12)
    assert verdict(GopherQualityFilter(GopherQualityConfig(min_stop_words=None)), text) is None


# --------------------------------------------------------------------------------------------
# Gopher repetition


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("\n\n".join(["The same paragraph again."] * 3 + [prose(2)]), "dup_para_frac"),
        ("\n".join(["First line here.", "Second line there.", "Third line again.", "Fourth line last."]
                   + ["Repeat me."] * 4), "dup_line_frac"),
        (prose(5) + "\n" + " ".join(["the cat"] * 150), "top_2_gram"),
    ],
)
def test_gopher_repetition_rules(text: str, reason: str) -> None:
    assert verdict(GopherRepetitionFilter(GopherRepetitionConfig()), text) == reason


def test_gopher_repetition_duplicated_ngrams() -> None:
    passage = " ".join(prose(6).split()[:40])
    text = prose(7) + "\n" + passage + " and then " + passage
    cfg = GopherRepetitionConfig(dup_line_frac=None, dup_line_char_frac=None, dup_para_frac=None,
                                 dup_para_char_frac=None, top_n_grams={})
    assert verdict(GopherRepetitionFilter(cfg), text) == "duplicated_5_n_grams"
    assert verdict(GopherRepetitionFilter(GopherRepetitionConfig()), GOOD) is None


def test_ngram_counts_by_hand() -> None:
    view = TextView(Document("d", "a b c a b c a b"))
    # 2-grams: ab ×3, bc ×2, ca ×2 → "a b" (3 chars) × 3
    assert top_ngram_chars(view, 2) == 9
    # 3-grams abc bca cab abc bca cab: scan, jump past each repeat: abc bca cab | abc(+3, jump 3) → cab? idx 6
    # is "a b" only (2 words left) → stops: 3 chars
    assert duplicated_ngram_chars(view, 3) == 3
    assert duplicated_ngram_chars(TextView(Document("d", "x y z w")), 2) == 0


def reference_duplicated_chars(words: list[str], n: int) -> int:
    """Gopher's duplicated n-gram rule written out plainly (n-grams compared as word tuples)."""
    seen, chars, idx = set(), 0, 0
    while idx < len(words) - n + 1:
        gram = tuple(words[idx : idx + n])
        if gram in seen:
            chars += sum(map(len, gram))
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return chars


def reference_top_chars(words: list[str], n: int) -> int:
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(words) - n + 1):
        g = tuple(words[i : i + n])
        counts[g] = counts.get(g, 0) + 1
    best = max(counts.items(), key=lambda kv: kv[1])  # first inserted wins ties
    return len(" ".join(best[0])) * best[1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "a", "c", "dd", "the", "x"]), min_size=1, max_size=80),
       st.integers(min_value=1, max_value=10))
def test_ngram_scan_matches_the_plain_rule(words: list[str], n: int) -> None:
    view = TextView(Document("d", " ".join(words)))
    assert view.words == words
    if len(words) >= n:
        assert duplicated_ngram_chars(view, n) == reference_duplicated_chars(words, n)
        assert top_ngram_chars(view, n) == reference_top_chars(words, n)


# --------------------------------------------------------------------------------------------
# C4


def test_c4_cleans_lines_and_keeps_the_document() -> None:
    text = "\n".join([
        "Accept our cookie policy to continue reading this page.",
        "Short line.",
        "Enable JavaScript to see the comments below this article.",
        "A good sentence stays here. Another one follows it! And a third one?",
        "Wikipedia says the bridge is old[1] and made of stone [citation needed].",
        "One more line with a sentence. And still another sentence here.",
    ])
    doc = Document("d", text)
    assert C4QualityFilter(C4FilterConfig())(TextView(doc)) is None
    assert doc.text.splitlines() == [
        "A good sentence stays here. Another one follows it! And a third one?",
        "Wikipedia says the bridge is old and made of stone .",
        "One more line with a sentence. And still another sentence here.",
    ]
    assert doc.metadata["scores"]["c4"]["sentences"] == 6


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (GOOD + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "lorem_ipsum"),
        (GOOD + "\nThe config is {debug: true} for this whole site.", "curly_bracket"),
        ("One sentence only here. Two sentences now.", "too_few_sentences"),
    ],
)
def test_c4_document_rules(text: str, reason: str) -> None:
    doc = Document("d", text)
    assert result_reason(C4QualityFilter(C4FilterConfig()).filter(TextView(doc))) == reason
    assert doc.text == text  # a dropped document is not rewritten


def test_c4_terminal_punctuation_rule_when_asked() -> None:
    text = "A line without an end mark\n" + GOOD
    doc = Document("d", text)
    C4QualityFilter(C4FilterConfig(filter_no_terminal_punct=True)).filter(TextView(doc))
    assert "A line without an end mark" not in doc.text


def test_sentence_counting() -> None:
    assert count_sentences("One. Two! Three? Four.") == 4
    assert count_sentences("Pi is 3.14 and that is all.") == 1
    assert count_sentences("Wait... and then more.") == 1
    assert count_sentences("") == 0


# --------------------------------------------------------------------------------------------
# FineWeb


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n\n  \n", "empty"),
        ("\n".join(["a line that has no final mark at all and goes on"] * 1 + [
            f"another line number {i} without end mark and enough words" for i in range(9)]), "line_punct_ratio"),
        ("\n".join([f"Item {i}." for i in range(10)]), "short_line_ratio"),
        (GOOD + "\n" + "This one line is repeated twice in the text.\n" * 2, "char_dup_ratio"),
        ("\n".join(f"Entry number {i} is here." for i in range(2)) + "\n" + GOOD, None),
    ],
)
def test_fineweb_rules(text: str, reason: str | None) -> None:
    assert verdict(FineWebQualityFilter(FineWebFilterConfig()), text) == reason


def test_fineweb_list_ratio() -> None:
    text = "\n".join(f"Name {i} lives in the town of the river, near the bridge." for i in range(12))
    cfg = FineWebFilterConfig(short_line_thr=None, char_duplicates_ratio=None, new_line_ratio=0.05)
    assert verdict(FineWebQualityFilter(cfg), text) == "list_ratio"


# --------------------------------------------------------------------------------------------
# length, code, language, domain


def test_length_bounds() -> None:
    f = LengthFilter(LengthFilterConfig(enabled=True, min_chars=10, max_words=5, min_lines=2))
    assert verdict(f, "tiny") == "too_few_chars"
    assert verdict(f, "one two three four five six seven") == "too_many_words"
    assert verdict(f, "one two three four") == "too_few_lines"
    assert verdict(f, "one two\nthree four") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("def f(x):\n    return x + 1\n", None),
        ("x = '" + "A" * 1200 + "'\n", "long_line"),
        ("\n".join(["y = " + "1" * 150] * 3), "long_mean_line"),
        ("{}[](){}<>;;::==++--**//" * 4 + "\n", "low_alnum_fraction"),
        ("# Code generated by protoc. DO NOT EDIT.\nimport os\n", "autogenerated"),
    ],
)
def test_code_rules(text: str, reason: str | None) -> None:
    assert verdict(CodeQualityFilter(CodeFilterConfig(enabled=True)), text) == reason


def test_language_identification_and_thresholds() -> None:
    french = ("Le village se trouve au bord de la rivière, et les habitants vont au marché chaque "
              "matin pour acheter du pain et des légumes frais.")
    doc = Document("d", french)
    assert LanguageFilter(LanguageFilterConfig(languages=["en"]))(TextView(doc)) == "language/other_language"
    assert doc.metadata["language"] == "fr" and doc.metadata["language_score"] > 0.9
    kept = Document("e", GOOD)
    assert LanguageFilter(LanguageFilterConfig(languages=["en", "fr"]))(TextView(kept)) is None
    assert kept.metadata["language"] == "en"
    strict = LanguageFilter(LanguageFilterConfig(min_score_per_language={"fr": 1.01}))
    assert strict(TextView(Document("f", french))) == "language/low_score"


def test_domain_rules(tmp_path: Path) -> None:
    (tmp_path / "blocked.txt").write_text("# spam\nspam.example\n")
    cfg = DomainFilterConfig(block_domains=["bad.example"], block_domains_files=["blocked.txt"],
                             block_url_patterns=[r"/casino/"], allow_domains=["ok.bad.example"])
    f = DomainFilter(cfg, tmp_path)
    assert verdict(f, GOOD, "https://www.bad.example/x") == "blocked_domain"
    assert verdict(f, GOOD, "https://sub.spam.example/x") == "blocked_domain"
    assert verdict(f, GOOD, "https://fine.example/casino/1") == "blocked_url"
    assert verdict(f, GOOD, "https://ok.bad.example/x") is None
    assert verdict(f, GOOD, None) is None
    only = DomainFilter(DomainFilterConfig(allow_domains=["fine.example"], allow_only=True))
    assert verdict(only, GOOD, "https://other.example/") == "not_allowed"
    assert verdict(only, GOOD, "https://a.fine.example/") is None
    assert url_host("HTTPS://WWW.Example.ORG:8080/a") == "example.org"
    assert url_host("not a url") == ""


# --------------------------------------------------------------------------------------------
# chains, overrides, counters


def test_chain_per_source_and_domain_overrides() -> None:
    cfg = FiltersConfig(
        per_source={"code": {"gopher_quality": {"enabled": False}, "gopher_repetition": {"enabled": False},
                             "c4": {"enabled": False}, "fineweb": {"enabled": False},
                             "code": {"enabled": True}}},
        per_domain={"wiki.example": {"gopher_quality": {"min_doc_words": 5}}},
    )
    chains = ChainSet(cfg, Path("."), samples_per_reason=1)
    code = Document("c", "def f(x):\n    return x\n", "code")
    label, chain = chains.chain_for(code)
    assert label == "source:code" and "code" in chain.names and "gopher_quality" not in chain.names
    assert chain(code) is None
    short = ("Rivers carry the water of distant mountains. Bridges connect villages across valleys. Markets open "
             "early every morning. Children walk toward school together. Travellers rest beside quiet lakes.")
    web = Document("w", short, "web", "https://en.wiki.example/page")
    label, chain = chains.chain_for(web)
    assert label == "domain:wiki.example"
    assert chain(web) is None
    other = Document("o", short, "web", "https://other.example/page")
    assert chains.chain_for(other)[0] == "default"
    assert chains.default(other) == "gopher_quality/short_doc"
    stats = chains.stats()
    assert stats["gopher_quality"]["dropped"] == {"short_doc": 1}
    assert chains.samples()["gopher_quality/short_doc"][0]["id"] == "o"


def test_stored_scores_are_reused_not_measured_again() -> None:
    doc = Document("d", GOOD)
    f = GopherQualityFilter(GopherQualityConfig())
    f(TextView(doc))
    doc.metadata["scores"]["gopher_quality"]["words"] = 3  # a stored score decides, not the text
    assert GopherQualityFilter(GopherQualityConfig())(TextView(doc)) == "gopher_quality/short_doc"
