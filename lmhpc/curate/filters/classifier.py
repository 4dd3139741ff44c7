"""Keep or drop documents by the label probabilities of a fastText classifier."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from lmhpc.curate.classifier import load_fasttext, predict_scores
from lmhpc.curate.filters.base import FilterResult, ScoredFilter
from lmhpc.curate.filters.config import ClassifierFilterConfig
from lmhpc.curate.filters.text import TextView


@lru_cache(maxsize=4)
def cached_classifier(path: str) -> Any:
    """One loaded fastText model per file and process."""
    return load_fasttext(path)


class ClassifierFilter(ScoredFilter):
    """Scores every label into ``metadata.scores.classifier``; keeps by ``keep_labels``/``remove_labels``."""

    name = "classifier"

    def __init__(self, cfg: ClassifierFilterConfig, model_path: Path, samples_per_reason: int = 0,
                 write_scores: bool = True) -> None:
        super().__init__(samples_per_reason, write_scores)
        self.cfg = cfg
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"curate.filters.classifier.model: no model file {model_path}")
        self.model = cached_classifier(str(model_path))
        self.labels = [label.removeprefix("__label__") for label in self.model.get_labels()]
        self.keep = {k.removeprefix("__label__"): v for k, v in cfg.keep_labels.items()}
        self.remove = {k.removeprefix("__label__"): v for k, v in cfg.remove_labels.items()}
        unknown = sorted((set(self.keep) | set(self.remove)) - set(self.labels))
        if unknown:
            raise ValueError(f"curate.filters.classifier: labels {unknown} are not in {model_path} "
                             f"(its labels: {self.labels})")

    def measure(self, doc: TextView) -> dict[str, Any]:
        scores = dict.fromkeys(self.labels, 0.0)
        scores.update(predict_scores(self.model, doc.text[: self.cfg.max_chars]))
        return scores

    def decide(self, s: dict[str, Any]) -> FilterResult:
        if self.keep:
            if any(s[label] >= score for label, score in self.keep.items()):
                return True
            return False, "below_keep_score"
        for label, score in self.remove.items():
            if s[label] >= score:
                return False, f"label_{label}"
        return True
