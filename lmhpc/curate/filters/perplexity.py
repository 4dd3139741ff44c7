"""Keep documents whose perplexity under a reference n-gram model lies within bounds."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import PerplexityFilterConfig
from lmhpc.curate.filters.text import TextView
from lmhpc.curate.ngram_lm import ArpaModel, KenlmModel, load_model, perplexity


@lru_cache(maxsize=4)
def cached_model(path: str) -> ArpaModel | KenlmModel:
    """One loaded model per file and process."""
    return load_model(path)


class PerplexityFilter(ScoredFilter):
    """Scores ``metadata.scores.perplexity.perplexity``; bounds may differ per language (set by the
    language filter, which runs earlier in the chain)."""

    name = "perplexity"

    def __init__(self, cfg: PerplexityFilterConfig, model_path: Path, samples_per_reason: int = 0,
                 write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"curate.filters.perplexity.model: no model file {model_path}")
        self.model = cached_model(str(model_path))

    def measure(self, doc: TextView) -> dict[str, Any]:
        pp = perplexity(self.model, doc.text[: self.cfg.max_chars])
        return {"perplexity": pp if math.isfinite(pp) else 1e30, "language": doc.metadata.get("language")}

    def decide(self, s: dict[str, Any]) -> FilterResult:
        bounds = self.cfg.per_language.get(s.get("language") or "")
        low, high = (bounds.min, bounds.max) if bounds is not None else (self.cfg.min, self.cfg.max)
        if low is not None and s["perplexity"] < low:
            return False, "perplexity_too_low"
        if high is not None and s["perplexity"] > high:
            return False, "perplexity_too_high"
        return True
