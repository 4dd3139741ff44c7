"""What the tokenizer and tokenize stages read: the dedup stage's shards, source weights, languages, names."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from lmhpc.context import StageContext
from lmhpc.data.documents import Document
from lmhpc.runner import StageFailed

MODEL_NAME = "tokenizer"  # the tokenizer stage writes <stage>/tokenizer.model, .vocab
UNKNOWN_LANGUAGE = "unknown"


def input_shards(ctx: StageContext) -> list[Path]:
    """The dedup stage's document shards, sorted by name (the order every later step keeps)."""
    data = ctx.inputs["dedup"] / "data"
    shards = sorted(p for p in data.glob("part-*.jsonl*") if p.is_file() and not p.name.startswith("."))
    if not shards:
        raise StageFailed(f"stage {ctx.stage}: no document shards (part-*.jsonl*) in {data}")
    return shards


def source_weights(ctx: StageContext, explicit: dict[str, float]) -> dict[str, float]:
    """Weights per source: ``explicit`` when given, else the curate inputs' weights (by their ``source``);
    sources named nowhere weigh 1."""
    if explicit:
        return dict(explicit)
    weights: dict[str, float] = {}
    for spec in ctx.cfg.curate.inputs:
        if spec.source:
            weights[spec.source] = spec.weight
    return weights


def document_language(doc: Document) -> str:
    """The language the curate stage found (``metadata.language``), or ``unknown``."""
    lang = doc.metadata.get("language") if isinstance(doc.metadata, dict) else None
    return lang if isinstance(lang, str) and lang else UNKNOWN_LANGUAGE


def safe_name(source: str) -> str:
    """A file name for a source: itself when it is plain, else a cleaned form with a hash of the original."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", source):
        return source
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("._-")[:48] or "source"
    return f"{cleaned}-{hashlib.sha1(source.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def threads_for(ctx: StageContext, configured: int) -> int:
    """``configured`` threads, or the stage's ``cpus_per_task`` when 0."""
    return configured if configured > 0 else max(1, ctx.cfg.resources_for(ctx.stage).cpus_per_task)
