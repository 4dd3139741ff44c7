"""Shared, lazily computed views of a document's text: lines, paragraphs, words, n-gram hashes.

Every heuristic filter asks its questions of one :class:`TextView`, so a document is split into lines,
paragraphs and words once, whichever filters run. Words follow spaCy's English rules
(:mod:`lmhpc.curate.filters.words`), as datatrove's filters see them.
"""

from __future__ import annotations

import re
from functools import cached_property

import numpy as np

from lmhpc.curate.filters.words import split_words
from lmhpc.data.documents import Document

__all__ = ["TERMINAL_PUNCTUATION", "TextView", "split_words"]

# Unicode's Sentence_Terminal property (the characters that may end a sentence in any script).
TERMINAL_PUNCTUATION = (
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965"
    "\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u1803\u1809\u1944\u1945\u1aa8\u1aa9"
    "\u1aaa\u1aab\u1b4e\u1b4f\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1b7f\u1c3b\u1c3c\u1c7e\u1c7f\u2024"
    "\u203c\u203d\u2047\u2048\u2049\u2cf9\u2cfa\u2cfb\u2e2e\u2e3c\u2e53\u2e54\u2e60\u2e61\u3002\ua4ff"
    "\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1"
    "\uabeb\ufe12\ufe15\ufe16\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55"
    "\U00010f56\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047"
    "\U00011048\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5"
    "\U000111c6\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9"
    "\U000113d4\U000113d5\U0001144b\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb"
    "\U000115cc\U000115cd\U000115ce\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4"
    "\U000115d5\U000115d6\U000115d7\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944"
    "\U00011946\U00011a42\U00011a43\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8"
    "\U00011f43\U00011f44\U00016a6e\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016d6e"
    "\U00016d6f\U00016e98\U0001bc9f\U0001da88"
)
TERMINAL_PUNCTUATION_TUPLE = tuple(TERMINAL_PUNCTUATION)
# characters that make a token a symbol rather than a word when it holds nothing else
SYMBOL_CHARS = frozenset(
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    "—–”“„’´«»…、。，；：？！（）【】《》〈〉「」％～．►━∶１"
    + "".join(chr(c) for c in (*range(0, 9), *range(11, 32), *range(127, 160)))
    + TERMINAL_PUNCTUATION
)

_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
_LINE_SPLIT = re.compile(r"\n+")
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


def is_symbol_word(word: str) -> bool:
    """True for a token made of punctuation and symbol characters only."""
    return word[-1] in SYMBOL_CHARS and all(c in SYMBOL_CHARS for c in word)


class TextView:
    """A document seen by the filters. Attribute access to ``id``/``text``/``source``/``url``/``metadata``
    goes to the document; splits are computed on first use and shared by every filter."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc

    # the document itself
    @property
    def id(self) -> str:
        return self.doc.id

    @property
    def text(self) -> str:
        return self.doc.text

    @property
    def source(self) -> str:
        return self.doc.source

    @property
    def url(self) -> str | None:
        return self.doc.url

    @property
    def metadata(self) -> dict:
        return self.doc.metadata

    def replace_text(self, text: str) -> None:
        """Change the document's text (line-level cleaning); every cached split is dropped."""
        self.doc.text = text
        for name in list(self.__dict__):
            if name != "doc":
                del self.__dict__[name]

    # splits
    @cached_property
    def lines(self) -> list[str]:
        """``text.splitlines()``."""
        return self.doc.text.splitlines()

    @cached_property
    def newline_lines(self) -> list[str]:
        """Lines split on runs of ``\\n`` (blank lines vanish)."""
        return _LINE_SPLIT.split(self.doc.text)

    @cached_property
    def nonblank_lines(self) -> list[str]:
        """Lines split on ``\\n`` that hold something other than whitespace, unstripped."""
        return [line for line in self.doc.text.split("\n") if line and not line.isspace()]

    @cached_property
    def paragraphs(self) -> list[str]:
        """Paragraphs: the stripped text split on two or more ``\\n``."""
        return _PARAGRAPH_SPLIT.split(self.doc.text.strip())

    @cached_property
    def words(self) -> list[str]:
        """Words and symbols (see :func:`split_words`)."""
        return split_words(self.doc.text)

    @cached_property
    def content_words(self) -> list[str]:
        """Words holding something other than punctuation (see :data:`SYMBOL_CHARS`)."""
        symbols = SYMBOL_CHARS
        return [w for w in self.words if w[-1] not in symbols or not all(c in symbols for c in w)]

    @cached_property
    def word_lengths(self) -> np.ndarray:
        """Length of each word, as an int64 array."""
        return np.fromiter(map(len, self.words), dtype=np.int64, count=len(self.words))

    @cached_property
    def word_ids(self) -> np.ndarray:
        """A small integer per distinct word (first occurrence order), as uint64."""
        words = self.words
        vocab: dict[str, int] = {}
        ids = list(map(vocab.setdefault, words, range(1, len(words) + 1)))  # equal words share an id
        return np.asarray(ids, dtype=np.uint64)

    def ngram_hashes(self, n: int) -> np.ndarray:
        """A 64-bit hash of each word n-gram, in order (``len(words) - n + 1`` values)."""
        cache = self.__dict__.setdefault("_ngram_hashes", {})
        if n in cache:
            return cache[n]
        ids = self.word_ids
        if n == 1:
            hashes = ids
        else:
            shorter = self.ngram_hashes(n - 1)
            with np.errstate(over="ignore"):
                hashes = shorter[: len(ids) - n + 1] * _HASH_BASE + ids[n - 1 :]
        cache[n] = hashes
        return hashes

    def ngram_char_length(self, start: np.ndarray | int, n: int) -> np.ndarray | int:
        """Characters of the n-gram(s) starting at ``start``, words joined without spaces."""
        cum = self.__dict__.get("_cum_lengths")
        if cum is None:
            cum = self.__dict__["_cum_lengths"] = np.concatenate(([0], np.cumsum(self.word_lengths)))
        return cum[np.asarray(start) + n] - cum[start]
