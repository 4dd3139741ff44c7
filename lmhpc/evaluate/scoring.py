"""Log-likelihood of token continuations, batched, with each distinct context computed once.

Requests ``(context ids, continuation ids)`` are grouped by context into prefix trees
(:mod:`lmhpc.evaluate.packed`) where sharing the context pays (:func:`_worth_sharing`), the trees sorted
by length and packed into batches of at most ``batch_tokens`` padded tokens. The scores are those of
running each ``context + continuation`` alone, the way lm-evaluation-harness's Hugging Face model does
(without its left truncation: a request longer than the model's context is refused, and callers count it
as skipped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmhpc.evaluate.packed import Tree, score_plain, score_trees, supports_trees

Request = tuple[list[int], list[int]]


TREE_TOKENS = 1024  # longest row a shared context grows to: attention over a row costs its length squared


def _worth_sharing(tree: Tree, continuation: list[int]) -> bool:
    """Whether ``continuation`` joins ``tree`` rather than starting another row with the same context: the
    context it saves must be worth a quarter of its length (a one-token context of rolling windows is not)
    and the row stays within :data:`TREE_TOKENS`."""
    return 4 * len(tree.context) >= len(continuation) and tree.length + len(continuation) - 1 <= TREE_TOKENS


class TooLong(ValueError):
    """A request needs more positions than the model has."""


@dataclass
class ScoreCounters:
    """What the scorer did: requests, distinct contexts (trees), forward passes, tokens run."""

    requests: int = 0
    trees: int = 0
    batches: int = 0
    tokens: int = 0  # tokens through the model (padding excluded)
    padded_tokens: int = 0


class Scorer:
    """Scores requests with one model; ``max_len``: the model's context (positions)."""

    def __init__(self, model: nn.Module, device: torch.device, max_len: int, batch_tokens: int = 2048) -> None:
        self.model = model
        self.device = device
        self.max_len = max_len
        self.batch_tokens = batch_tokens
        self.trees = supports_trees(model)
        self.counters = ScoreCounters()

    def fits(self, context: list[int], continuation: list[int]) -> bool:
        """Whether ``context + continuation`` (its last token a target only) fits the model's positions."""
        return len(context) + len(continuation) - 1 <= self.max_len

    def loglikelihood(self, requests: list[Request],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(log-probability of the continuation given the context, whether it is the greedy continuation) for
        each request, in order. Raises :class:`TooLong` for a request that does not fit and ``ValueError``
        for an empty context or continuation."""
        trees: list[tuple[Tree, list[int]]] = []
        open_trees: dict[tuple[int, ...], tuple[Tree, list[int]]] = {}
        for i, (context, continuation) in enumerate(requests):
            if not context or not continuation:
                raise ValueError(f"request {i}: empty {'context' if not context else 'continuation'}")
            if not self.fits(context, continuation):
                raise TooLong(f"request {i}: {len(context)} context + {len(continuation)} continuation tokens "
                              f"exceed the model's {self.max_len} positions")
            key = tuple(context)
            tree = open_trees.get(key)
            if tree is not None and _worth_sharing(tree[0], continuation):
                tree[0].continuations.append(continuation)
                tree[1].append(i)
            else:
                open_trees[key] = (Tree(list(context), [continuation]), [i])
                trees.append(open_trees[key])
        trees.sort(key=lambda t: -t[0].length)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        self.counters.requests += len(requests)
        self.counters.trees += len(trees)
        for batch in self._batches(trees):
            run = score_trees if self.trees else score_plain
            scores = run(self.model, [tree for tree, _ in batch], self.device)
            for (_, members), tree_scores in zip(batch, scores):
                for i, score in zip(members, tree_scores):
                    results[i] = score
            if progress is not None:
                progress(sum(len(members) for _, members in batch))
        return results

    def _batches(self, trees: list[tuple[Tree, list[int]]]) -> list[list[tuple[Tree, list[int]]]]:
        """Consecutive trees (longest first) while rows × the longest row stays within ``batch_tokens``."""
        batches: list[list[tuple[Tree, list[int]]]] = []
        current: list[tuple[Tree, list[int]]] = []
        for item in trees:
            width = self._width(current[0][0] if current else item[0])
            if current and (len(current) + 1) * width > self.batch_tokens:
                batches.append(current)
                current = []
            current.append(item)
        if current:
            batches.append(current)
        for batch in batches:
            self.counters.batches += 1
            self.counters.tokens += sum(self._width(tree, own=True) for tree, _ in batch)
            self.counters.padded_tokens += len(batch) * self._width(batch[0][0])
        return batches

    def _width(self, tree: Tree, own: bool = False) -> int:
        if self.trees:
            return tree.length
        rows = [len(tree.context) + len(c) - 1 for c in tree.continuations]
        return sum(rows) if own else max(rows) * len(rows)
