"""Bounds on a document's characters, words and non-blank lines."""

from __future__ import annotations

from typing import Any

from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import LengthFilterConfig
from lmhpc.curate.filters.text import TextView


class LengthFilter(ScoredFilter):
    """Drops documents with too few or too many characters, words or lines."""

    name = "length"

    def __init__(self, cfg: LengthFilterConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg

    def measure(self, doc: TextView) -> dict[str, Any]:
        return {"chars": len(doc.text), "words": len(doc.content_words), "lines": len(doc.nonblank_lines)}

    def decide(self, s: dict[str, Any]) -> FilterResult:
        for what in ("chars", "words", "lines"):
            low, high = getattr(self.cfg, f"min_{what}"), getattr(self.cfg, f"max_{what}")
            if low is not None and s[what] < low:
                return False, f"too_few_{what}"
            if high is not None and s[what] > high:
                return False, f"too_many_{what}"
        return True
