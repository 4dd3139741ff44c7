"""Text normalisation before hashing, as configured by :class:`TextNormalization`."""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata

import numpy as np

from lmhpc.dedup.config import TextNormalization

# a number with at most one decimal separator, as datatrove matches it; \d is every script's decimal digits
_DIGIT_RUNS = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")


# planes that hold punctuation, symbols and combining marks (BMP, SMP, and the tags/variation selectors)
_CODE_POINTS = (range(0x0, 0x20000), range(0xE0000, 0xE1000))


@functools.cache
def _punctuation_table() -> dict[int, str]:
    """Code point → space for Unicode punctuation (P*), symbols (S*) and control characters (Cc)."""
    table = {}
    for cp in itertools.chain(*_CODE_POINTS):
        cat = unicodedata.category(chr(cp))
        if cat[0] in "PS" or (cat == "Cc" and chr(cp) not in "\t\n\r"):
            table[cp] = " "
    return table


@functools.cache
def _ascii_punctuation_table() -> dict[int, str]:
    return {cp: v for cp, v in _punctuation_table().items() if cp < 128}


@functools.cache
def _combining_marks_table() -> dict[int, None]:
    """Code point → deleted, for every non-spacing combining mark (Mn)."""
    return {cp: None for cp in itertools.chain(*_CODE_POINTS) if unicodedata.category(chr(cp)) == "Mn"}


_KEEP, _SPACE, _DELETE = 0, 1, 2
_TABLE_END = _CODE_POINTS[0].stop


@functools.cache
def _class_array(punctuation: bool, marks: bool) -> np.ndarray:
    """What happens to each code point below ``_TABLE_END``: kept, made a space, or deleted."""
    classes = np.zeros(_TABLE_END, dtype=np.uint8)
    if punctuation:
        classes[[cp for cp in _punctuation_table() if cp < _TABLE_END]] = _SPACE
    if marks:
        classes[[cp for cp in _combining_marks_table() if cp < _TABLE_END]] = _DELETE
    return classes


def _translate(text: str, punctuation: bool, marks: bool) -> str:
    """``str.translate`` with the punctuation and/or combining-mark tables, vectorised over code points
    (several times faster than ``str.translate`` on non-ASCII text)."""
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    classes = _class_array(punctuation, marks)[np.minimum(cps, _TABLE_END - 1)]
    high = np.flatnonzero(cps >= _TABLE_END)
    if len(high):  # tags and variation selectors beyond the table
        table = {**(_punctuation_table() if punctuation else {}), **(_combining_marks_table() if marks else {})}
        for i in high:
            action = table.get(int(cps[i]), "")
            classes[i] = _KEEP if action == "" else _SPACE if action == " " else _DELETE
    out = np.where(classes == _SPACE, np.uint32(32), cps)[classes != _DELETE]
    return out.tobytes().decode("utf-32-le", "surrogatepass")


def normalize_text(text: str, norm: TextNormalization) -> str:
    """Apply ``norm``'s steps to ``text``: Unicode form, lower case, digits, punctuation, diacritics, whitespace.

    Punctuation and combining marks go in one pass over the NFD form (decomposing first does not change
    which characters are punctuation), and ASCII text takes a small table.
    """
    if norm.unicode_form != "none" and not text.isascii():
        text = unicodedata.normalize(norm.unicode_form, text)
    if norm.lowercase:
        text = text.lower()
    if norm.digits_to_zero:
        text = _DIGIT_RUNS.sub("0", text)
    if text.isascii():
        if norm.remove_punctuation:
            text = text.translate(_ascii_punctuation_table())
    elif norm.strip_diacritics:
        text = _translate(unicodedata.normalize("NFD", text), norm.remove_punctuation, True)
    elif norm.remove_punctuation:
        text = _translate(text, True, False)
    if norm.collapse_whitespace:
        text = " ".join(text.split())
    return text
