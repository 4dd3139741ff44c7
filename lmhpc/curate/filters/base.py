"""The filter contract: a filter answers one question about a document and nothing else.

``filter(doc) -> bool | tuple[bool, str]``: ``True`` keeps the document, ``(False, reason)`` drops it.
The base class counts documents in and drops by reason, keeps a few samples of each reason's drops
and times itself. :class:`ScoredFilter` splits the work in two, as a scoring step
(``measure(doc) -> scores``) and a pure decision on those scores (``decide(scores)``): scores are
written to ``metadata["scores"][name]``, so different thresholds can be applied later
(``python -m lmhpc.curate.rethreshold``) without measuring again.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from lmhpc.curate.filters.text import TextView

FilterResult = bool | tuple[bool, str]
SAMPLE_TEXT_CHARS = 4000
SCORES_KEY = "scores"


def result_reason(result: FilterResult) -> str | None:
    """``None`` when the result keeps the document, else the drop reason (``"dropped"`` if none given)."""
    if isinstance(result, tuple):
        keep, reason = result
        return None if keep else (reason or "dropped")
    return None if result else "dropped"


class BaseFilter:
    """Counts, samples and times a filter; subclasses implement :meth:`filter`."""

    name: str = "filter"

    def __init__(self, samples_per_reason: int = 0) -> None:
        self.samples_per_reason = samples_per_reason
        self.docs_in = 0
        self.dropped: Counter[str] = Counter()
        self.seconds = 0.0
        self.samples: dict[str, list[dict[str, Any]]] = {}

    def filter(self, doc: TextView) -> FilterResult:
        """Keep (``True``) or drop (``(False, reason)``) one document."""
        raise NotImplementedError

    def __call__(self, doc: TextView) -> str | None:
        """Run the filter on ``doc``: ``None`` if kept, else the qualified reason ``"<name>/<reason>"``."""
        started = time.perf_counter()
        reason = result_reason(self.filter(doc))
        self.seconds += time.perf_counter() - started
        self.docs_in += 1
        if reason is None:
            return None
        self.dropped[reason] += 1
        qualified = f"{self.name}/{reason}"
        kept = self.samples.setdefault(qualified, [])
        if len(kept) < self.samples_per_reason:
            kept.append(drop_sample(doc, qualified))
        return qualified

    def stats(self) -> dict[str, Any]:
        """``{"in", "dropped": {reason: n}, "seconds"}`` of this filter so far."""
        return {"in": self.docs_in, "dropped": dict(self.dropped), "seconds": round(self.seconds, 6)}


class ScoredFilter(BaseFilter):
    """A filter that measures scores, then decides on them. Stored scores are reused when present."""

    def __init__(self, samples_per_reason: int = 0, write_scores: bool = True) -> None:
        super().__init__(samples_per_reason)
        self.write_scores = write_scores

    def measure(self, doc: TextView) -> dict[str, Any]:
        """The scores of ``doc`` that :meth:`decide` needs (JSON-serialisable numbers)."""
        raise NotImplementedError

    def decide(self, scores: dict[str, Any]) -> FilterResult:
        """Keep or drop, from the scores alone. Raises ``KeyError`` when a needed score is missing."""
        raise NotImplementedError

    def reusable(self, scores: dict[str, Any]) -> bool:
        """Whether scores stored earlier can stand in for measuring again."""
        return True

    def annotate(self, doc: TextView, scores: dict[str, Any]) -> None:
        """Write what the filter found into the document's metadata beyond its scores (optional)."""

    def scores_of(self, doc: TextView) -> dict[str, Any]:
        """Scores stored earlier when they are complete and reusable, else freshly measured (and stored)."""
        stored = doc.metadata.get(SCORES_KEY, {}).get(self.name)
        if isinstance(stored, dict) and self.reusable(stored):
            try:
                self.decide(stored)
                return stored
            except KeyError:
                pass  # measured with other settings: measure again
        scores = self.measure(doc)
        if self.write_scores:
            doc.metadata.setdefault(SCORES_KEY, {})[self.name] = scores
        return scores

    def filter(self, doc: TextView) -> FilterResult:
        scores = self.scores_of(doc)
        self.annotate(doc, scores)
        return self.decide(scores)


def drop_sample(doc: TextView, reason: str) -> dict[str, Any]:
    """What is kept of a dropped document for inspection."""
    text = doc.text
    return {
        "id": doc.id,
        "source": doc.source,
        "url": doc.url,
        "reason": reason,
        "text": text[:SAMPLE_TEXT_CHARS],
        "text_chars": len(text),
        "scores": doc.metadata.get(SCORES_KEY, {}),
    }


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, or 0.0 when there is nothing to divide by."""
    return numerator / denominator if denominator else 0.0
