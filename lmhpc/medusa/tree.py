"""Static candidate trees for Medusa decoding.

A tree is a list of paths: ``(i1, ..., id)`` is the candidate whose token at depth j is head j's ``ij``-th most
likely token (depth 0, the root, is the model's own next token). Every path's prefixes must be in the tree.
One verification forward scores the root and every node, each attending to the cache and to its ancestors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Path = tuple[int, ...]

# the default: sized for CPUs, where each extra verified token costs ~0.15 of a decoding step
DEFAULT_TREE: tuple[Path, ...] = ((0,), (1,), (0, 0), (1, 0), (0, 1), (0, 0, 0))
CHAIN_TREES = {n: tuple((0,) * d for d in range(1, n + 1)) for n in range(1, 6)}


@dataclass(frozen=True)
class Tree:
    """A tree's nodes in order (the root first, then by depth), with what a verification needs."""

    paths: tuple[Path, ...]  # paths[0] == (): the root
    parents: tuple[int, ...]  # parents[0] == -1
    ancestors: torch.Tensor  # (T, T) bool: ancestors[i, j] when node j is node i or one of its ancestors
    depths: torch.Tensor  # (T,) long
    widths: tuple[int, ...]  # candidates needed from each head (largest index at each depth, + 1)

    @property
    def size(self) -> int:
        return len(self.paths)

    @property
    def depth(self) -> int:
        return len(self.widths)

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in self.paths]
        for i, p in enumerate(self.parents):
            if p >= 0:
                kids[p].append(i)
        return kids

    def cut(self, depth: int) -> Tree:
        """The nodes at most ``depth`` deep."""
        return build_tree([p for p in self.paths[1:] if len(p) <= depth])


def parse_tree(text: str) -> tuple[Path, ...]:
    """Paths from a command-line spelling: ``"0;1;0,0;0,0,0"`` (paths separated by ``;``, indices by ``,``), or
    ``chain:N`` (a chain of N head tokens, each head's top token)."""
    text = text.strip()
    if text.startswith("chain:"):
        n = int(text.split(":", 1)[1])
        if n < 1:
            raise ValueError(f"a chain needs at least one node, got {text!r}")
        return tuple((0,) * d for d in range(1, n + 1))
    try:
        return tuple(tuple(int(i) for i in part.split(",")) for part in text.split(";") if part.strip())
    except ValueError:
        raise ValueError(f"a tree is paths like '0;1;0,0' or 'chain:3', got {text!r}") from None


def build_tree(paths: Sequence[Sequence[int]], num_heads: int | None = None) -> Tree:
    """The :class:`Tree` of ``paths`` (checked: no negative index, every prefix present, at most ``num_heads``
    deep)."""
    unique = sorted({tuple(int(i) for i in p) for p in paths if len(p)}, key=lambda p: (len(p), p))
    for p in unique:
        if min(p) < 0:
            raise ValueError(f"tree path {p}: indices must be >= 0")
        if len(p) > 1 and p[:-1] not in unique:
            raise ValueError(f"tree path {p}: its prefix {p[:-1]} is not in the tree")
        if num_heads is not None and len(p) > num_heads:
            raise ValueError(f"tree path {p} is {len(p)} deep; the heads predict {num_heads} tokens ahead")
    nodes: list[Path] = [(), *unique]
    index = {p: i for i, p in enumerate(nodes)}
    parents = tuple(-1 if not p else index[p[:-1]] for p in nodes)
    size = len(nodes)
    ancestors = torch.zeros(size, size, dtype=torch.bool)
    for i, p in enumerate(nodes):
        for d in range(len(p) + 1):
            ancestors[i, index[p[:d]]] = True
    depth = max((len(p) for p in nodes), default=0)
    widths = tuple(max(p[d] for p in unique if len(p) > d) + 1 for d in range(depth))
    return Tree(tuple(nodes), parents, ancestors, torch.tensor([len(p) for p in nodes]), widths)
