"""Text normalisation before hashing, as configured by :class:`TextNormalization`."""

from __future__ import annotations

import functools
import re
import sys
import unicodedata

from lmhpc.dedup.config import TextNormalization

# a number with at most one decimal separator, as datatrove matches it; \d is every script's decimal digits
_DIGIT_RUNS = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")


@functools.cache
def _punctuation_table() -> dict[int, str]:
    """Code point → space for Unicode punctuation (P*), symbols (S*) and control characters (Cc)."""
    table = {}
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        if cat[0] in "PS" or (cat == "Cc" and chr(cp) not in "\t\n\r"):
            table[cp] = " "
    return table


@functools.cache
def _combining_marks_table() -> dict[int, None]:
    """Code point → deleted, for every non-spacing combining mark (Mn)."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Mn"}


def normalize_text(text: str, norm: TextNormalization) -> str:
    """Apply ``norm``'s steps to ``text`` in a fixed order: Unicode form, lower case, digits, punctuation,
    diacritics, whitespace."""
    if norm.unicode_form != "none" and not text.isascii():
        text = unicodedata.normalize(norm.unicode_form, text)
    if norm.lowercase:
        text = text.lower()
    if norm.digits_to_zero:
        text = _DIGIT_RUNS.sub("0", text)
    if norm.remove_punctuation:
        text = text.translate(_punctuation_table())
    if norm.strip_diacritics and not text.isascii():
        text = unicodedata.normalize("NFD", text).translate(_combining_marks_table())
    if norm.collapse_whitespace:
        text = " ".join(text.split())
    return text
