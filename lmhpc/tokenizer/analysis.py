"""Token analysis (the "auxiliary tokenizer" check of data quality), per source and per language.

For a group of documents: bytes per token, tokens per whitespace word (fertility), the share of tokens that
are UTF-8 byte-fallback tokens, the share of the vocabulary used, and the most frequent tokens. Counts are
kept per (source, language) pair as one vector of token counts each, so per-source, per-language and total
figures are sums of the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SEP = "\t"  # joins source and language in saved keys; neither may contain it (sanitised on the way in)
SCALARS = ("docs", "bytes", "words", "tokens")


def group_key(source: str, language: str) -> str:
    return f"{source.replace(SEP, ' ')}{SEP}{language.replace(SEP, ' ')}"


def split_key(key: str) -> tuple[str, str]:
    source, language = key.split(SEP, 1)
    return source, language


class TokenTally:
    """Token counts and text sizes per (source, language) pair."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.counts: dict[str, np.ndarray] = {}
        self.scalars: dict[str, dict[str, int]] = {}

    def add(
        self,
        source: str,
        languages: Sequence[str],
        tokens: np.ndarray,
        lengths: np.ndarray,
        nbytes: Sequence[int],
        nwords: Sequence[int],
        eod_id: int | None = None,
    ) -> None:
        """Count one batch of documents of ``source``: ``tokens`` are their ids concatenated, ``lengths`` the
        tokens per document; ``eod_id``, when given, is the end-of-document token each one ends with, which
        is not text and is not counted."""
        lengths = np.asarray(lengths, dtype=np.int64)
        langs = sorted(set(languages))
        if len(langs) == 1:
            per_lang = {langs[0]: np.bincount(tokens, minlength=self.vocab_size)}
        else:
            code_of = {lang: i for i, lang in enumerate(langs)}
            codes = np.fromiter((code_of[x] for x in languages), dtype=np.int64, count=len(languages))
            combined = np.repeat(codes, lengths) * self.vocab_size + tokens.astype(np.int64)
            table = np.bincount(combined, minlength=len(langs) * self.vocab_size).reshape(len(langs), -1)
            per_lang = {lang: table[i] for i, lang in enumerate(langs)}
        nbytes_a = np.asarray(nbytes, dtype=np.int64)
        nwords_a = np.asarray(nwords, dtype=np.int64)
        lang_arr = np.asarray(languages, dtype=object)
        for lang, counts in per_lang.items():
            mask = lang_arr == lang
            ndocs = int(mask.sum())
            counts = counts.astype(np.int64, copy=True)
            ntokens = int(lengths[mask].sum())
            if eod_id is not None:
                counts[eod_id] -= ndocs
                ntokens -= ndocs
            self._add(group_key(source, lang), counts, ndocs, int(nbytes_a[mask].sum()),
                      int(nwords_a[mask].sum()), ntokens)

    def _add(self, key: str, counts: np.ndarray, docs: int, nbytes: int, words: int, tokens: int) -> None:
        if key in self.counts:
            self.counts[key] += counts
        else:
            self.counts[key] = counts.astype(np.int64, copy=True)
        s = self.scalars.setdefault(key, dict.fromkeys(SCALARS, 0))
        s["docs"] += docs
        s["bytes"] += nbytes
        s["words"] += words
        s["tokens"] += tokens

    def merge(self, other: TokenTally) -> None:
        """Add another tally (of the same vocabulary)."""
        for key, counts in other.counts.items():
            s = other.scalars[key]
            self._add(key, counts, s["docs"], s["bytes"], s["words"], s["tokens"])

    def save(self, path: Path) -> None:
        """Write the tally to an ``.npz`` file (atomically)."""
        from lmhpc.fsutil import atomic_path

        keys = sorted(self.counts)
        arrays = {f"counts_{i}": self.counts[k] for i, k in enumerate(keys)}
        scal = np.array([[self.scalars[k][n] for n in SCALARS] for k in keys], dtype=np.int64).reshape(-1, 4)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.array(keys, dtype=str), scalars=scal,
                         vocab_size=np.array(self.vocab_size), **arrays)

    @classmethod
    def load(cls, path: Path) -> TokenTally:
        with np.load(path) as data:
            tally = cls(int(data["vocab_size"]))
            for i, key in enumerate(data["keys"].tolist()):
                docs, nbytes, words, tokens = (int(x) for x in data["scalars"][i])
                tally._add(str(key), data[f"counts_{i}"], docs, nbytes, words, tokens)
        return tally

    def groups(self) -> dict[str, dict[str, tuple[dict[str, int], np.ndarray]]]:
        """Figures summed per source, per language and in total:
        ``{"by_source": {s: (scalars, counts)}, "by_language": {...}, "total": {"all": ...}}``."""
        out: dict[str, dict[str, tuple[dict[str, int], np.ndarray]]] = {"by_source": {}, "by_language": {}, "total": {}}
        for key in sorted(self.counts):
            source, lang = split_key(key)
            for kind, name in (("by_source", source), ("by_language", lang), ("total", "all")):
                scal, counts = out[kind].get(name, (dict.fromkeys(SCALARS, 0), np.zeros(self.vocab_size, np.int64)))
                scal = {n: scal[n] + self.scalars[key][n] for n in SCALARS}
                out[kind][name] = (scal, counts + self.counts[key])
        return out


def summarize(scalars: dict[str, int], counts: np.ndarray, pieces: Sequence[str], byte_mask: np.ndarray,
              top: int) -> dict[str, Any]:
    """The figures of one group of documents."""
    tokens = max(int(scalars["tokens"]), 0)
    byte_tokens = int(counts[byte_mask].sum())
    order = np.argsort(-counts, kind="stable")[:top]
    return {
        "docs": int(scalars["docs"]),
        "bytes": int(scalars["bytes"]),
        "words": int(scalars["words"]),
        "tokens": tokens,
        "bytes_per_token": round(scalars["bytes"] / tokens, 4) if tokens else 0.0,
        "tokens_per_word": round(tokens / scalars["words"], 4) if scalars["words"] else 0.0,
        "byte_fallback_rate": round(byte_tokens / tokens, 6) if tokens else 0.0,
        "vocab_used": round(int(np.count_nonzero(counts)) / len(pieces), 6) if len(pieces) else 0.0,
        "top_tokens": [[pieces[int(i)], int(counts[i])] for i in order if counts[i] > 0],
    }


def summarize_tally(tally: TokenTally, pieces: Sequence[str], byte_mask: np.ndarray, top: int) -> dict[str, Any]:
    """Per-source, per-language and total figures of a tally."""
    out: dict[str, Any] = {}
    for kind, groups in tally.groups().items():
        summaries = {name: summarize(s, c, pieces, byte_mask, top) for name, (s, c) in groups.items()}
        out[kind] = summaries.get("all", {}) if kind == "total" else summaries
    return out


def format_table(analysis: dict[str, Any], title: str, extra: dict[str, dict[str, Any]] | None = None) -> str:
    """A Markdown table of the figures per source and per language (``extra`` adds columns per source)."""
    extra = extra or {}
    extra_cols = sorted({k for v in extra.values() for k in v})
    head = ["group", "docs", "MB", "tokens", "bytes/token", "tokens/word", "byte fallback %", "vocab used %",
            *extra_cols, "top tokens"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(f"source:{k}", v) for k, v in sorted(analysis.get("by_source", {}).items())]
    rows += [(f"lang:{k}", v) for k, v in sorted(analysis.get("by_language", {}).items())]
    if analysis.get("total"):
        rows.append(("total", analysis["total"]))
    for name, v in rows:
        src = name.split(":", 1)[1] if name.startswith("source:") else None
        ex = [_fmt(extra.get(src, {}).get(c, "")) if src else "" for c in extra_cols]
        top = " ".join(repr(p)[1:-1].replace("|", "\\|") for p, _ in v.get("top_tokens", [])[:8])
        lines.append("| " + " | ".join([
            name, str(v["docs"]), f"{v['bytes'] / 1e6:.2f}", str(v["tokens"]), f"{v['bytes_per_token']:.3f}",
            f"{v['tokens_per_word']:.3f}", f"{100 * v['byte_fallback_rate']:.3f}", f"{100 * v['vocab_used']:.2f}",
            *ex, f"`{top}`" if top else "",
        ]) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
