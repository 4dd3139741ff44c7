"""Normalisation and vectorised shingle hashing."""

from __future__ import annotations

import numpy as np
import pytest

from lmhpc.dedup.config import MinHashConfig, TextNormalization
from lmhpc.dedup.normalize import _DIGIT_RUNS as _DIGITS
from lmhpc.dedup.normalize import normalize_text
from lmhpc.dedup.shingles import MULTIPLIERS, fmix64, shingle_hashes, word_hashes
from tests.helpers import import_peer


def reference_word_shingles(text: str, n: int) -> list[int]:
    """The documented construction, one shingle at a time in plain Python."""
    words = text.split()
    hashes, _ = word_hashes([" ".join(words)])
    out = []
    for i in range(len(words) - n + 1):
        acc = 0
        for k in range(n):
            acc = (acc + int(hashes[i + k]) * int(MULTIPLIERS[k])) % 2**64
        out.append(int(fmix64(np.array([acc], dtype=np.uint64))[0]) >> 32)
    return out


def test_batch_matches_reference_and_never_crosses_documents():
    texts = ["the cat sat on the mat today", "", "one two", "a b c d e f g h", "zebra"]
    values, offsets = shingle_hashes(texts, "word", 3)
    for d, t in enumerate(texts):
        assert values[offsets[d] : offsets[d + 1]].tolist() == reference_word_shingles(t, 3)
    assert np.diff(offsets).tolist() == [5, 0, 0, 6, 0]


def test_equal_words_hash_equal_and_order_matters():
    h, counts = word_hashes(["alpha beta alpha", "beta"])
    assert counts.tolist() == [3, 1]
    assert h[0] == h[2] and h[1] == h[3] and h[0] != h[1]
    ab, _ = shingle_hashes(["x y"], "word", 2)
    ba, _ = shingle_hashes(["y x"], "word", 2)
    assert ab.tolist() != ba.tolist()


def test_words_differing_in_one_byte_or_length_differ():
    words = ["abc", "abd", "abcd", "ab", "cba", "x" * 70, "x" * 71, "ü", "u"]
    h, _ = word_hashes([" ".join(words)])
    assert len(set(h.tolist())) == len(words)


def test_char_shingles():
    values, offsets = shingle_hashes(["abcd", "ab", "xbcd"], "char", 3)
    assert np.diff(offsets).tolist() == [2, 0, 2]
    assert values[1] == values[3]  # "bcd" in both
    assert values[0] != values[2]


def test_whitespace_does_not_change_word_shingles():
    a, _ = shingle_hashes(["one  two\nthree\tfour"], "word", 2)
    b, _ = shingle_hashes(["one two three four"], "word", 2)
    assert a.tolist() == b.tolist()


def test_unknown_unit():
    with pytest.raises(ValueError, match="unknown shingle unit"):
        shingle_hashes(["a"], "sentence", 1)


def test_exact_normalization_defaults():
    norm = TextNormalization()
    assert normalize_text("  Hello\u00a0 WORLD\n\n", norm) == "hello world"
    assert normalize_text("ﬁne", norm) == "fine"  # NFKC folds the ligature
    assert normalize_text("Hello, world!", norm) == "hello, world!"  # punctuation kept for exact dedup


@pytest.mark.parametrize("text", [
    "The Quick, brown fox -- jumped over 1,234.5 lazy dogs!!! Didn't it?",
    "Café au lait: naïve résumé costs 3.50 euros (approx.) [citation needed]",
    "line one\nline two\t\ttabbed   spaced ... ellipsis… “quoted” text",
    "2024-01-02 12:30 #hashtag @user a/b+c=d 50% off",
])
def test_shingle_normalization_agrees_with_datatrove(text):
    """The benchmark compares against datatrove with the same shingling: our simplified words must be
    the ones datatrove's simplify_text yields on ordinary text. datatrove is a test-only peer
    (requirements-test.txt)."""
    simplify_text = import_peer("datatrove.utils.text").simplify_text

    ours = normalize_text(text, MinHashConfig().normalize).split()
    theirs = simplify_text(text).split()
    assert ours == theirs


def test_single_spaced_fast_path_equals_general_path():
    texts = ["one two three four", "", "a", "ünï cödé wörds here and there"]
    assert all(np.array_equal(x, y) for x, y in zip(shingle_hashes(texts, "word", 2, single_spaced=True),
                                                      shingle_hashes(texts, "word", 2)))


def test_one_pass_normalization_equals_step_by_step():
    """Punctuation and combining marks removed in one pass over the NFD form, as datatrove does in two."""
    import unicodedata

    from lmhpc.dedup.normalize import _combining_marks_table, _punctuation_table

    norm = MinHashConfig().normalize
    texts = ["Ελληνικά; ερώτηση\u037e τέλος\u0387 τέλος", "Ça coûte 12,50 € — déjà vu?", "नमस्ते दुनिया।",
             "日本語のテキスト、句読点。", "plain ascii, with: punctuation!", "Zürich ﬁne ½ ①"]
    for text in texts:
        step = _DIGITS.sub("0", text.lower()).translate(_punctuation_table())
        step = unicodedata.normalize("NFD", step).translate(_combining_marks_table())
        assert normalize_text(text, norm) == " ".join(step.split()), text


def test_vectorised_translation_equals_str_translate():
    from lmhpc.dedup.normalize import _combining_marks_table, _punctuation_table, _translate

    text = "déjà-vu! ¿qué? «quotes» 𝄞 music 🙂 emoji \U000e0041 tag e\U000e0100 selector Ω≈ç√ ½"
    both = {**_punctuation_table(), **_combining_marks_table()}
    assert _translate(text, True, True) == text.translate(both)
    assert _translate(text, True, False) == text.translate(_punctuation_table())
    assert _translate(text, False, True) == text.translate(_combining_marks_table())
