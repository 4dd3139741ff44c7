"""Scoring a probe with the evaluate library's pieces, keeping what paired comparisons need.

The row has the evaluate stage's shape (``perplexity.<set>`` and ``tasks.<task>`` summaries, with standard
errors), so :mod:`lmhpc.evaluate.results` reads it. Besides, every probe is scored on the same documents and items
(one tokenizer for all variants), so the per-document log-likelihoods and per-item accuracies are kept too
(``items.json``): the difference of two variants then has a paired standard error, the spread of the
per-item differences, far smaller than the two scores' own errors combined when the items vary more than the
probes do.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.evaluate.multiple_choice import mean_stderr, score_items
from lmhpc.evaluate.perplexity import score_documents
from lmhpc.evaluate.scoring import Scorer
from lmhpc.evaluate.stage import perplexity_documents
from lmhpc.evaluate.tasks import TASKS


def score_probe(cfg: EvaluateConfig, name: str, checkpoint: Path, tokenizer: Path, items: dict[str, list],
                data_dir: Path | None, quarantine: Any, device: torch.device, resolve: Any
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the evaluate row of the probe at ``checkpoint``, its per-item figures)."""
    from lmhpc.exchange import load_model

    started = time.perf_counter()
    loaded = load_model(checkpoint, device=device, dtype=getattr(torch, cfg.dtype), tokenizer=tokenizer)
    model, tok = loaded.model, loaded.tokenizer
    prefix_token = tok.bos_id if tok.bos_id is not None else tok.eos_id
    if prefix_token is None:
        raise ValueError(f"{tokenizer}: the tokenizer has neither a BOS nor an EOS token to start a window with")
    max_len = loaded.args.max_seq_len
    scorer = Scorer(model, device, max_len, cfg.batch_tokens)
    row: dict[str, Any] = {"name": name, "source": str(checkpoint), "max_seq_len": max_len,
                           "vocab_size": tok.vocab_size, "perplexity": {}, "tasks": {}}
    per_item: dict[str, Any] = {"perplexity": {}, "tasks": {}}
    window = min(cfg.perplexity.window or max_len, max_len)
    for set_name, docs in perplexity_documents(cfg, tok, data_dir, quarantine, resolve).items():
        tallies, skipped = score_documents(scorer, docs, prefix_token, window)
        total = tallies.get("all")
        row["perplexity"][set_name] = {
            **(total.summary() if total else {"docs": 0, "tokens": 0}),
            "per_source": {s: t.summary() for s, t in sorted(tallies.items()) if s != "all"},
            "skipped": skipped, "window": window,
        }
        per_item["perplexity"][set_name] = [list(d) for d in total.per_doc] if total else []
    for task_name, task_items in items.items():
        result = score_items(scorer, tok, prefix_token, task_items, task_name, cfg.too_long)
        task = TASKS.get(task_name)
        metrics = list(task.metrics) if task else ["acc", "acc_norm"]
        row["tasks"][task_name] = {**result.summary(metrics), "metrics": metrics}
        per_item["tasks"][task_name] = {m: list(getattr(result, m)) for m in metrics}
    row["scorer"] = vars(scorer.counters)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row, per_item


def paired_stderr(metric: str, variant: dict[str, Any], baseline: dict[str, Any]) -> float | None:
    """The standard error of ``variant - baseline`` for one metric column (``<set> bpb``, ``<task> <metric>``),
    from the per-item figures of both; None when they were not scored on the same items."""
    name, kind = metric.rsplit(" ", 1)
    if kind == "bpb":
        a, b = variant["perplexity"].get(name), baseline["perplexity"].get(name)
        if not a or not b or len(a) != len(b) or any(x[1:] != y[1:] for x, y in zip(a, b)):
            return None
        # bpb = Σ nll / (Σ bytes · ln 2): the difference is Σ (nll_v - nll_b) / Σ bytes / ln 2 (delta method)
        pairs = [(x[0] - y[0], x[2]) for x, y in zip(a, b)]
        n, total = len(pairs), sum(p[1] for p in pairs)
        if n < 2 or not total:
            return None
        ratio = sum(p[0] for p in pairs) / total
        residual = sum((d - ratio * nb) ** 2 for d, nb in pairs) / (n - 1)
        return math.sqrt(residual / n) / (total / n) / math.log(2)
    a = variant["tasks"].get(name, {}).get(kind)
    b = baseline["tasks"].get(name, {}).get(kind)
    if not a or not b or len(a) != len(b):
        return None
    return mean_stderr([x - y for x, y in zip(a, b)])
