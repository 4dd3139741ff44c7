"""Selection after the filters: hard score thresholds or probabilistic sampling, and per-source
mixing weights. Every random decision comes from a hash of (seed, purpose, document id), so it is
the same whatever the number of tasks or the order documents are read in.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from lmhpc.curate.config import SelectionConfig
from lmhpc.data.documents import Document


def uniform(seed: int, purpose: str, doc_id: str) -> float:
    """A number in [0, 1) fixed by ``seed``, ``purpose`` and the document id."""
    digest = hashlib.blake2b(f"{seed}\0{purpose}\0{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def score_at(metadata: dict[str, Any], path: str) -> float | None:
    """The number at dotted ``path`` (e.g. ``classifier.hq``) under ``metadata["scores"]``, or None."""
    node: Any = metadata.get("scores", {})
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else None


def keep_probability(cfg: SelectionConfig, score: float) -> float:
    """How likely a document with ``score`` is kept by sampling (score read as a quality in [0, 1])."""
    quality = 1.0 - score if cfg.invert else score
    quality = min(max(quality, 0.0), 1.0)
    if cfg.sampler == "linear":
        return quality
    # GPT-3 style Pareto selection: keep when pareto(alpha) > 1 - quality, i.e. with this probability
    return min(1.0, (2.0 - quality) ** -cfg.alpha)


class Selector:
    """Applies ``curate.selection`` and mixing weights to documents the filters kept."""

    def __init__(self, cfg: SelectionConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        self.sources = frozenset(cfg.sources)

    def select(self, doc: Document, weight: float = 1.0) -> str | None:
        """``None`` to keep ``doc``, else the drop reason (``selection/...`` or ``mixing/...``)."""
        cfg = self.cfg
        if cfg.mode != "none" and (not self.sources or doc.source in self.sources):
            score = score_at(doc.metadata, cfg.score)
            if score is None or math.isnan(score):
                return "selection/missing_score"
            if cfg.mode == "threshold":
                if cfg.min_score is not None and score < cfg.min_score:
                    return "selection/below_min_score"
                if cfg.max_score is not None and score > cfg.max_score:
                    return "selection/above_max_score"
            elif uniform(self.seed, "select", doc.id) >= keep_probability(cfg, score):
                return "selection/sampled_out"
        if weight < 1.0 and uniform(self.seed, "mix", doc.id) >= weight:
            return "mixing/downsampled"
        if weight != 1.0:
            doc.metadata["mix_weight"] = weight
        return None
