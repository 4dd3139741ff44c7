"""FineWeb's own quality rules (Penedo et al. 2024) over the non-blank lines of a document."""

from __future__ import annotations

from typing import Any

from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import FineWebFilterConfig
from lmhpc.curate.filters.gopher import duplicates
from lmhpc.curate.filters.text import TERMINAL_PUNCTUATION_TUPLE, TextView


class FineWebQualityFilter(ScoredFilter):
    """Share of lines ending in punctuation, share of short lines, duplicated-line characters, newlines per word."""

    name = "fineweb"

    def __init__(self, cfg: FineWebFilterConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg

    def measure(self, doc: TextView) -> dict[str, Any]:
        lines = doc.nonblank_lines
        n_lines = len(lines)
        if not n_lines:
            return {"lines": 0}
        text = doc.text
        short = self.cfg.short_line_length
        n_words = len(doc.words)
        return {
            "lines": n_lines,
            "line_punct_ratio": sum(1 for line in lines if line.endswith(TERMINAL_PUNCTUATION_TUPLE)) / n_lines,
            "short_line_ratio": sum(1 for line in lines if len(line) <= short) / n_lines,
            "char_dup_ratio": duplicates(lines)[1] / (len(text) - text.count("\n")),
            "newline_ratio": text.count("\n") / n_words if n_words else float(n_lines),
        }

    def decide(self, s: dict[str, Any]) -> FilterResult:
        c = self.cfg
        if not s["lines"]:
            return False, "empty"
        punct = s["line_punct_ratio"]
        if c.line_punct_thr is not None and punct < c.line_punct_thr and not (punct == 0 and c.line_punct_exclude_zero):
            return False, "line_punct_ratio"
        if c.short_line_thr is not None and s["short_line_ratio"] > c.short_line_thr:
            return False, "short_line_ratio"
        if c.char_duplicates_ratio is not None and s["char_dup_ratio"] > c.char_duplicates_ratio:
            return False, "char_dup_ratio"
        if c.new_line_ratio is not None and s["newline_ratio"] > c.new_line_ratio:
            return False, "list_ratio"
        return True
