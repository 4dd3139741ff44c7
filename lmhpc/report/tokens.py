"""Tokenizer figures on a set of documents, for any tokenizer the exchange package loads.

Per group of documents (per source, per language, in total): bytes per token, tokens per whitespace word
(fertility), and the share of tokens that are byte-fallback pieces (``<0xNN>``) or the unknown token. Which
ids are byte or unknown pieces is read from the tokenizer's own vocabulary.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmhpc.exchange.tokenizer import TextTokenizer

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
FIGURES = ("bytes_per_token", "tokens_per_word", "byte_fallback_share", "unknown_share")


@dataclass
class PieceFlags:
    """Ids of byte-fallback pieces and of the unknown token (empty when the tokenizer has none)."""

    byte_ids: frozenset[int] = frozenset()
    unk_ids: frozenset[int] = frozenset()


def piece_flags(tok: TextTokenizer) -> PieceFlags:
    """The byte and unknown pieces of a sentencepiece model or a Hugging Face tokenizer file."""
    sp = getattr(tok, "sp", None)
    if sp is not None:
        n = sp.get_piece_size()
        return PieceFlags(frozenset(i for i in range(n) if sp.is_byte(i)),
                          frozenset(i for i in range(n) if sp.is_unknown(i)))
    hf = getattr(tok, "tok", None)
    if hf is not None:
        vocab = hf.get_vocab(with_added_tokens=True)
        byte_ids = frozenset(i for piece, i in vocab.items() if BYTE_PIECE.fullmatch(piece))
        unk = getattr(hf.model, "unk_token", None)
        unk_id = hf.token_to_id(unk) if isinstance(unk, str) else None
        return PieceFlags(byte_ids, frozenset() if unk_id is None else frozenset({unk_id}))
    return PieceFlags()


@dataclass
class Tally:
    """Sizes and token counts of one group of documents."""

    docs: int = 0
    bytes: int = 0
    words: int = 0
    tokens: int = 0
    byte_tokens: int = 0
    unk_tokens: int = 0

    def figures(self) -> dict[str, float]:
        return {
            "bytes_per_token": self.bytes / self.tokens if self.tokens else 0.0,
            "tokens_per_word": self.tokens / self.words if self.words else 0.0,
            "byte_fallback_share": self.byte_tokens / self.tokens if self.tokens else 0.0,
            "unknown_share": self.unk_tokens / self.tokens if self.tokens else 0.0,
        }


@dataclass
class TokenFigures:
    """A tokenizer's tallies per source, per language and in total."""

    by_source: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_language: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    total: Tally = field(default_factory=Tally)


def measure(tok: TextTokenizer, docs: Iterable[tuple[str, str, str]]) -> TokenFigures:
    """Figures of ``tok`` over ``(source, language, text)`` triples."""
    flags = piece_flags(tok)
    byte_ids = np.fromiter(flags.byte_ids, dtype=np.int64)
    unk_ids = np.fromiter(flags.unk_ids, dtype=np.int64)
    out = TokenFigures()
    for source, language, text in docs:
        ids = np.asarray(tok.encode(text), dtype=np.int64)
        n_bytes = len(text.encode("utf-8", "replace"))
        n_words = len(text.split())
        n_byte = int(np.isin(ids, byte_ids).sum()) if len(byte_ids) else 0
        n_unk = int(np.isin(ids, unk_ids).sum()) if len(unk_ids) else 0
        for tally in (out.by_source[source], out.by_language[language], out.total):
            tally.docs += 1
            tally.bytes += n_bytes
            tally.words += n_words
            tally.tokens += len(ids)
            tally.byte_tokens += n_byte
            tally.unk_tokens += n_unk
    return out


def stage_figures(group: dict[str, Any]) -> dict[str, float]:
    """The same figures from the tokenizer stage's own analysis of one group (its stats.json)."""
    return {"bytes_per_token": float(group.get("bytes_per_token") or 0.0),
            "tokens_per_word": float(group.get("tokens_per_word") or 0.0),
            "byte_fallback_share": float(group.get("byte_fallback_rate") or 0.0)}
