"""Gopher's quality and repetition rules (Rae et al. 2021, table A1), as datatrove applies them.

Both filters share the document's word split; the n-gram rules work on 64-bit hashes of word-id
n-grams with numpy, and skip the sequential duplicate scan when no n-gram repeats at all.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any

import numpy as np

from lmhpc.curate.filters.base import FilterResult, ScoredFilter, ratio
from lmhpc.curate.filters.config import GopherQualityConfig, GopherRepetitionConfig
from lmhpc.curate.filters.text import TextView


class GopherQualityFilter(ScoredFilter):
    """Word count, mean word length, symbol ratios, bullet/ellipsis lines, alphabetic words, stop words."""

    name = "gopher_quality"

    def __init__(self, cfg: GopherQualityConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        self.stop_words = frozenset(cfg.stop_words)

    def measure(self, doc: TextView) -> dict[str, Any]:
        text = doc.text
        words = doc.words
        content = doc.content_words
        n_words = len(words)
        n_content = len(content)
        lines = doc.lines
        n_lines = len(lines) or 1
        n_alpha = n_content - sum(1 for w in content if not w.isalpha() and not _has_alpha(w))
        bullets = sum(1 for line in lines if line.lstrip().startswith(("•", "-")))
        ellipsis_end = sum(1 for line in lines if line.rstrip().endswith(("...", "…")))
        return {
            "words": n_content,
            "mean_word_length": ratio(sum(map(len, content)), n_content),
            "hash_ratio": ratio(text.count("#"), n_words),
            "ellipsis_ratio": ratio(text.count("...") + text.count("…"), n_words),
            "bullet_lines_ratio": bullets / n_lines,
            "ellipsis_lines_ratio": ellipsis_end / n_lines,
            "alpha_words_ratio": ratio(n_alpha, n_words),
            "stop_words": len(self.stop_words.intersection(words)),
        }

    def decide(self, s: dict[str, Any]) -> FilterResult:
        c = self.cfg
        if c.min_doc_words is not None and s["words"] < c.min_doc_words:
            return False, "short_doc"
        if c.max_doc_words is not None and s["words"] > c.max_doc_words:
            return False, "long_doc"
        if c.min_avg_word_length is not None and s["mean_word_length"] < c.min_avg_word_length:
            return False, "below_avg_word_length"
        if c.max_avg_word_length is not None and s["mean_word_length"] > c.max_avg_word_length:
            return False, "above_avg_word_length"
        if c.max_symbol_word_ratio is not None and s["hash_ratio"] > c.max_symbol_word_ratio:
            return False, "too_many_hashes"
        if c.max_symbol_word_ratio is not None and s["ellipsis_ratio"] > c.max_symbol_word_ratio:
            return False, "too_many_ellipsis"
        if c.max_bullet_lines_ratio is not None and s["bullet_lines_ratio"] > c.max_bullet_lines_ratio:
            return False, "too_many_bullets"
        if c.max_ellipsis_lines_ratio is not None and s["ellipsis_lines_ratio"] > c.max_ellipsis_lines_ratio:
            return False, "too_many_end_ellipsis"
        if c.min_alpha_words_ratio is not None and s["alpha_words_ratio"] < c.min_alpha_words_ratio:
            return False, "below_alpha_threshold"
        if c.min_stop_words is not None and s["stop_words"] < c.min_stop_words:
            return False, "not_enough_stop_words"
        return True


def _has_alpha(word: str) -> bool:
    return not word.isdigit() and any(c.isalpha() for c in word)


class GopherRepetitionFilter(ScoredFilter):
    """Duplicated lines and paragraphs, the most frequent n-grams, duplicated n-grams."""

    name = "gopher_repetition"

    def __init__(self, cfg: GopherRepetitionConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        self.top_n_grams = sorted((int(n), f) for n, f in cfg.top_n_grams.items())
        self.dup_n_grams = sorted((int(n), f) for n, f in cfg.dup_n_grams.items())

    def measure(self, doc: TextView) -> dict[str, Any]:
        """Scores in rule order, stopping at the first rule that fails (as the decision does): the
        n-gram scans are skipped for documents already dropped. A later run with looser thresholds finds
        the missing scores and measures again."""
        text = doc.text
        n_chars = len(text)
        if not n_chars:
            return {"chars": 0}
        paragraphs = doc.paragraphs
        para_dups, para_dup_chars = duplicates(paragraphs)
        lines = doc.newline_lines
        line_dups, line_dup_chars = duplicates(lines)
        scores: dict[str, Any] = {
            "chars": n_chars,
            "dup_para_frac": para_dups / len(paragraphs),
            "dup_para_char_frac": para_dup_chars / n_chars,
            "dup_line_frac": line_dups / len(lines),
            "dup_line_char_frac": line_dup_chars / n_chars,
        }
        if self._failed(scores):
            return scores
        n_words = len(doc.words)
        for n, frac in self.top_n_grams:
            scores[f"top_{n}_gram"] = top_ngram_chars(doc, n) / n_chars if n_words >= n else 0.0
            if scores[f"top_{n}_gram"] > frac:
                return scores
        repeats = True
        for n, frac in self.dup_n_grams:  # ascending: once no n-gram repeats, no longer one does either
            chars = duplicated_ngram_chars(doc, n) if repeats and n_words >= n else 0
            repeats = chars > 0
            scores[f"dup_{n}_gram"] = chars / n_chars
            if scores[f"dup_{n}_gram"] > frac:
                return scores
        return scores

    def _failed(self, scores: dict[str, Any]) -> bool:
        try:
            return self.decide(scores) is not True
        except KeyError:
            return False  # not decided yet

    def decide(self, s: dict[str, Any]) -> FilterResult:
        c = self.cfg
        if not s["chars"]:
            return False, "empty"
        if c.dup_para_frac is not None and s["dup_para_frac"] > c.dup_para_frac:
            return False, "dup_para_frac"
        if c.dup_para_char_frac is not None and s["dup_para_char_frac"] > c.dup_para_char_frac:
            return False, "dup_para_char_frac"
        if c.dup_line_frac is not None and s["dup_line_frac"] > c.dup_line_frac:
            return False, "dup_line_frac"
        if c.dup_line_char_frac is not None and s["dup_line_char_frac"] > c.dup_line_char_frac:
            return False, "dup_line_char_frac"
        for n, frac in self.top_n_grams:
            if s[f"top_{n}_gram"] > frac:
                return False, f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            if s[f"dup_{n}_gram"] > frac:
                return False, f"duplicated_{n}_n_grams"
        return True


def duplicates(items: list[str]) -> tuple[int, int]:
    """(number of repeated items, characters in the repeats) — each first occurrence is not a repeat."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _run_starts(ordered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal values in a sorted array."""
    new_run = np.empty(len(ordered), dtype=bool)
    new_run[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new_run[1:])
    starts = np.flatnonzero(new_run)
    lengths = np.empty_like(starts)
    lengths[:-1] = starts[1:] - starts[:-1]
    lengths[-1:] = len(ordered) - starts[-1:]
    return starts, lengths


def top_ngram_chars(doc: TextView, n: int) -> int:
    """Characters covered by the most frequent word n-gram (joined by spaces) times its count;
    among equally frequent n-grams the first to occur counts."""
    hashes = doc.ngram_hashes(n)
    ordered = np.sort(hashes)
    starts, lengths = _run_starts(ordered)
    top = int(lengths.max())
    if top == 1:
        start = 0
    else:
        values = ordered[starts[lengths == top]]
        start = int(np.flatnonzero(np.isin(hashes, values))[0])
    return (int(doc.ngram_char_length(start, n)) + n - 1) * top


def duplicated_ngram_chars(doc: TextView, n: int) -> int:
    """Characters (words joined without spaces) in n-grams that repeat an earlier n-gram, scanning left
    to right and jumping past each repeat, so overlapping repeats are not counted twice.

    The scan only visits positions whose n-gram occurred before: position ``j`` is a repeat exactly when
    an earlier occurrence of its n-gram was visited, that is, does not lie in the ``n - 1`` positions
    jumped over after an earlier repeat.
    """
    hashes = doc.ngram_hashes(n)
    ordered = np.sort(hashes)
    if not (ordered[1:] == ordered[:-1]).any():
        return 0
    order = np.argsort(hashes, kind="stable")
    starts, lengths = _run_starts(ordered)
    run_of = np.repeat(starts, lengths)  # for each entry of the order, where its run starts
    later = np.flatnonzero(run_of != np.arange(len(hashes)))  # not the first of their run
    positions = order[later]
    by_position = np.argsort(positions, kind="stable")
    candidates = positions[by_position].tolist()
    cand_entry = later[by_position].tolist()
    cand_run = run_of[later][by_position].tolist()
    order_list = order.tolist()
    cum = doc.ngram_char_length(np.asarray(candidates), n).tolist()
    jumped_from: list[int] = []  # windows [j + 1, j + n) skipped after the repeat at j, in order
    chars = 0
    next_free = 0
    k = 0
    total = len(candidates)
    while k < total:
        j = candidates[k]
        if j < next_free:
            k = bisect_left(candidates, next_free, k + 1)
            continue
        for entry in range(cand_run[k], cand_entry[k]):
            i = order_list[entry]  # earlier occurrences, in position order
            w = bisect_right(jumped_from, i - 1) - 1
            if w < 0 or i >= jumped_from[w] + n:
                chars += cum[k]
                jumped_from.append(j)
                next_free = j + n
                break
        k += 1
    return chars
