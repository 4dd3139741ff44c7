"""Choosing the next token from a batch of logits (B, vocab): penalties, filters, greedy or seeded sampling.

The order and the semantics are transformers' (``generate``'s logits processors): repetition penalty, then
temperature, then top-k, then top-p, then a draw from the softmax of what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """``temperature`` 0: greedy. ``top_k`` 0 and ``top_p`` 1: no filtering. ``repetition_penalty`` 1: none."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make the tokens already in a row (``seen``: bool (B, vocab)) less likely (CTRL, Keskar et al. 2019):
    a positive logit is divided by ``penalty``, a negative one multiplied by it."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep each row's ``k`` largest logits (and any tied with the k-th); the others become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens whose probabilities, taken in decreasing order, first
    reach ``p`` in total (a token stays when the mass before it is below ``p``; the most likely always stays)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token of each row (B,) from ``logits`` (B, vocab), float32 for the arithmetic."""
    logits = logits.float()
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits / params.temperature, params.top_k), params.top_p)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
