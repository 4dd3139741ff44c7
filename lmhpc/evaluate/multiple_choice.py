"""Multiple-choice scoring as lm-evaluation-harness does it: ``acc`` and ``acc_norm`` (log-likelihood divided by
the choice's length in characters), with the harness's standard errors (sample standard deviation / √n).

Requests are tokenized like the harness's ``TemplateLM``: trailing spaces of the context move to the
continuation, the continuation is what encoding ``context + continuation`` adds after encoding the context,
and an empty context becomes the prefix token. An item that cannot be scored is counted, never scored:
``too_long`` (a request longer than the model's context, when ``too_long="skip"``) and bad documents by
reason.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmhpc.evaluate.scoring import Request, Scorer, TooLong
from lmhpc.evaluate.tasks import BadTaskItem, MCItem
from lmhpc.exchange.tokenizer import TextTokenizer


def encode_request(tokenizer: TextTokenizer, context: str, continuation: str, prefix_token: int) -> Request:
    """Token ids of a ``(context, continuation)`` pair, split the way the harness splits them."""
    if context == "":
        cont = tokenizer.encode(continuation)
        return ([prefix_token], cont) if cont[:1] != [prefix_token] else (cont[:1], cont[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation = context[-spaces:] + continuation
        context = context[:-spaces]
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def mean_stderr(values: list[float]) -> float | None:
    """The harness's ``mean_stderr``: sample standard deviation (n − 1) over √n."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


@dataclass
class TaskResult:
    """Scores of one task and what was left out of them."""

    name: str
    acc: list[float] = field(default_factory=list)
    acc_norm: list[float] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    requests: int = 0
    seconds: float = 0.0

    def summary(self, metrics: Iterable[str] = ("acc", "acc_norm")) -> dict[str, Any]:
        out: dict[str, Any] = {"items": len(self.acc), "skipped": dict(self.skipped),
                               "requests": self.requests, "seconds": round(self.seconds, 3),
                               "items_per_s": len(self.acc) / self.seconds if self.seconds else None}
        for metric in metrics:
            values = getattr(self, metric)
            out[metric] = sum(values) / len(values) if values else None
            out[f"{metric}_stderr"] = mean_stderr(values)
        return out


def score_items(scorer: Scorer, tokenizer: TextTokenizer, prefix_token: int,
                items: list[MCItem | BadTaskItem], name: str, too_long: str = "skip") -> TaskResult:
    """acc and acc_norm of each scorable item. ``items`` may hold :class:`BadTaskItem` for documents that could
    not be read: they are counted by reason (:func:`bad_reason`)."""
    started = time.perf_counter()
    result = TaskResult(name)
    requests: list[Request] = []
    kept: list[tuple[MCItem, int]] = []  # item, index of its first request
    for item in items:
        if isinstance(item, BadTaskItem):
            result.skipped[bad_reason(item)] += 1
            continue
        encoded = [encode_request(tokenizer, c, k, prefix_token) for c, k in item.requests]
        empty = [i for i, (_, cont) in enumerate(encoded) if not cont]
        if empty:
            result.skipped["empty_continuation"] += 1
            continue
        if not all(scorer.fits(c, k) for c, k in encoded):
            if too_long == "error":
                longest = max(len(c) + len(k) for c, k in encoded)
                raise TooLong(f"{name}: an item needs {longest} tokens, the model has {scorer.max_len} positions "
                              "(evaluate.too_long=skip counts such items instead)")
            result.skipped["too_long"] += 1
            continue
        kept.append((item, len(requests)))
        requests += encoded
    scores = scorer.loglikelihood(requests) if requests else []
    result.requests = len(requests)
    for item, start in kept:
        lls = np.array([s for s, _ in scores[start:start + len(item.requests)]])
        lengths = np.array([float(len(c)) for c in item.choices])
        result.acc.append(1.0 if int(np.argmax(lls)) == item.gold else 0.0)
        result.acc_norm.append(1.0 if int(np.argmax(lls / lengths)) == item.gold else 0.0)
    result.seconds = time.perf_counter() - started
    return result


def bad_reason(error: BadTaskItem) -> str:
    """A short counter key for a bad item: ``malformed_line``, ``empty_choices``, ``bad_gold``, ``bad_item``."""
    text = str(error)
    if "malformed JSON" in text or "JSON object" in text:
        return "malformed_line"
    if "empty choice list" in text:
        return "empty_choices"
    if "gold" in text:
        return "bad_gold"
    return "bad_item"
