"""Perplexity per token and bits per byte over whole documents, per source.

Each document is scored in rolling windows of the model's context the way lm-evaluation-harness's
``loglikelihood_rolling`` does it (``get_rolling_token_windows`` with one token of context, then
``make_disjoint_window``): the first token is predicted from the prefix token (BOS, else EOS), every
other token exactly once, with as much preceding text as a window holds. Bits per byte divide the
negative log-likelihood by the document's UTF-8 bytes, so models with different tokenizers compare.
The standard errors treat documents as the sampled units (ratio estimator over documents).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lmhpc.evaluate.scoring import Request, Scorer


def rolling_windows(tokens: list[int], prefix_token: int, window: int) -> Iterator[Request]:
    """``(context, continuation)`` pairs that predict every token of ``tokens`` once (the harness's scheme
    with ``context_len=1``); each pair fits ``window`` positions."""
    if window < 2:
        raise ValueError("a window needs at least 2 tokens")
    if not tokens:
        return
    first = min(window, len(tokens))
    yield [prefix_token], tokens[:first]
    predicted = first
    while predicted < len(tokens):
        count = min(len(tokens) - predicted, window)
        end = predicted + count
        inputs = tokens[max(end - window - 1, 0):end - 1]
        yield inputs[:len(inputs) - (count - 1)], tokens[end - count:end]
        predicted += count


@dataclass
class Document:
    """One text to score: its tokens and the UTF-8 bytes they stand for."""

    source: str
    tokens: list[int]
    nbytes: int
    words: int = 0


@dataclass
class SourceTally:
    """Sums over the documents of one source, and per-document values for standard errors."""

    docs: int = 0
    tokens: int = 0
    bytes: int = 0
    words: int = 0
    nll: float = 0.0  # nats
    per_doc: list[tuple[float, int, int]] = field(default_factory=list)  # (nll, tokens, bytes)

    def add(self, doc: Document, nll: float) -> None:
        self.docs += 1
        self.tokens += len(doc.tokens)
        self.bytes += doc.nbytes
        self.words += doc.words
        self.nll += nll
        self.per_doc.append((nll, len(doc.tokens), doc.nbytes))

    def summary(self) -> dict[str, Any]:
        """Per-token loss and perplexity, bits per byte, with standard errors."""
        if not self.tokens:
            return {"docs": self.docs, "tokens": 0, "bytes": self.bytes}
        loss = self.nll / self.tokens
        bpb = self.nll / (self.bytes * math.log(2)) if self.bytes else None
        loss_se = _ratio_stderr([(n, t) for n, t, _ in self.per_doc])
        bpb_se = _ratio_stderr([(n, b) for n, _, b in self.per_doc])
        out: dict[str, Any] = {
            "docs": self.docs, "tokens": self.tokens, "bytes": self.bytes,
            "loss": loss, "loss_stderr": loss_se, "perplexity": math.exp(loss),
            "bits_per_byte": bpb, "bits_per_byte_stderr": bpb_se / math.log(2) if bpb_se is not None else None,
            "bytes_per_token": self.bytes / self.tokens,
        }
        if self.words:
            out["word_perplexity"] = math.exp(self.nll / self.words)
        return out


def _ratio_stderr(pairs: list[tuple[float, int]]) -> float | None:
    """Standard error of ``Σx / Σy`` with documents as the sampled units (delta method)."""
    n = len(pairs)
    total_y = sum(y for _, y in pairs)
    if n < 2 or not total_y:
        return None
    ratio = sum(x for x, _ in pairs) / total_y
    mean_y = total_y / n
    residual = sum((x - ratio * y) ** 2 for x, y in pairs) / (n - 1)
    return math.sqrt(residual / n) / mean_y


def score_documents(scorer: Scorer, docs: list[Document], prefix_token: int, window: int
                    ) -> tuple[dict[str, SourceTally], dict[str, int]]:
    """Tallies by source (and ``"all"``), and counts of what was skipped (``empty_document``)."""
    requests: list[Request] = []
    owner: list[int] = []
    skipped = {"empty_document": 0}
    for d, doc in enumerate(docs):
        if not doc.tokens:
            skipped["empty_document"] += 1
            continue
        for pair in rolling_windows(doc.tokens, prefix_token, window):
            requests.append(pair)
            owner.append(d)
    scores = scorer.loglikelihood(requests) if requests else []
    nll = [0.0] * len(docs)
    for d, (logprob, _) in zip(owner, scores):
        nll[d] -= logprob
    tallies: dict[str, SourceTally] = {}
    for d, doc in enumerate(docs):
        if not doc.tokens:
            continue
        for key in (doc.source, "all"):
            tallies.setdefault(key, SourceTally()).add(doc, nll[d])
    return tallies, skipped
