"""Language identification with py3langid, whose model ships inside the package (works offline)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import LanguageFilterConfig
from lmhpc.curate.filters.text import TextView


@lru_cache(maxsize=1)
def language_identifier() -> Any:
    """py3langid's identifier with normalised probabilities, loaded once per process."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def identify_language(text: str, max_chars: int = 10_000) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the language of ``text`` (first ``max_chars`` characters)."""
    lang, score = language_identifier().classify(text[:max_chars].replace("\n", " "))
    return str(lang), float(score)


class LanguageFilter(ScoredFilter):
    """Writes ``metadata.language``/``language_score``; keeps listed languages above their score threshold."""

    name = "language"

    def __init__(self, cfg: LanguageFilterConfig, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        self.languages = frozenset(cfg.languages)

    def measure(self, doc: TextView) -> dict[str, Any]:
        lang, score = identify_language(doc.text, self.cfg.max_chars)
        return {"language": lang, "score": score}

    def annotate(self, doc: TextView, scores: dict[str, Any]) -> None:
        doc.metadata["language"] = scores["language"]
        doc.metadata["language_score"] = scores["score"]

    def decide(self, s: dict[str, Any]) -> FilterResult:
        lang = s["language"]
        if self.languages and lang not in self.languages:
            return False, "other_language"
        if s["score"] < self.cfg.min_score_per_language.get(lang, self.cfg.min_score):
            return False, "low_score"
        return True
