"""A seeded, order-independent sample of documents per source, and how a budget is shared between sources.

Every document gets a key, a hash of (seed, document id). Per source we keep the documents with the smallest
keys until their text adds up to a byte budget (a bottom-k sample by bytes). The kept set depends only on
the documents and the seed, never on the order they are read in, so readers can split the shards any way
and merge their samples: the result is the same whatever the number of ranks or workers.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal


def doc_key(seed: int, doc_id: str) -> int:
    """A 64-bit pseudo-random key of a document, fixed by the seed and the document id."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, order=True)
class SampledDoc:
    """A document in a sample, ordered by (key, id)."""

    key: int
    id: str
    text: str = field(compare=False)
    source: str = field(compare=False)
    language: str = field(compare=False)
    nbytes: int = field(compare=False)


class BottomKSample:
    """The documents with the smallest keys whose text adds up to at least ``budget_bytes`` (all documents
    when there is less). Adding documents in any order, or merging samples, gives the same set."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._heap: list[tuple[int, str, SampledDoc]] = []  # max-heap on (key, id) via negation
        self.kept_bytes = 0

    def add(self, doc: SampledDoc) -> None:
        """Offer one document."""
        if self.budget_bytes <= 0:
            return
        if self.kept_bytes >= self.budget_bytes and self._heap and (doc.key, doc.id) > self._largest():
            return
        heapq.heappush(self._heap, (-doc.key, _neg_str(doc.id), doc))
        self.kept_bytes += doc.nbytes
        while self._heap and self.kept_bytes - self._heap[0][2].nbytes >= self.budget_bytes:
            dropped = heapq.heappop(self._heap)[2]
            self.kept_bytes -= dropped.nbytes

    def _largest(self) -> tuple[int, str]:
        top = self._heap[0][2]
        return top.key, top.id

    def merge(self, other: BottomKSample) -> None:
        """Add every document of another sample (of the same budget)."""
        for _, _, doc in other._heap:
            self.add(doc)

    def docs(self) -> list[SampledDoc]:
        """The kept documents in key order."""
        return sorted(entry[2] for entry in self._heap)

    def __len__(self) -> int:
        return len(self._heap)


class _NegStr(str):
    """A string that sorts in reverse, so the max-heap on (key, id) breaks ties on the largest id first."""

    def __lt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:  # type: ignore[override]
        return str.__lt__(self, other)


def _neg_str(s: str) -> _NegStr:
    return _NegStr(s)


def allocate(
    budget: float, available: dict[str, int], weights: dict[str, float], mode: Literal["weights", "natural"]
) -> dict[str, int]:
    """Share ``budget`` bytes between sources: in proportion to ``weights`` (mode ``weights``) or to
    ``weight x available`` (mode ``natural``). A source smaller than its share gives all it has and the rest
    is shared again among the others (water-filling). Sources of weight 0 get nothing."""
    share = {
        s: (weights.get(s, 1.0) * (available[s] if mode == "natural" else 1.0))
        for s in sorted(available)
    }
    active = {s for s, w in share.items() if w > 0 and available[s] > 0}
    alloc = {s: 0 for s in available}
    left = float(budget)
    while active and left > 0:
        total = sum(share[s] for s in active)
        capped = {s for s in active if available[s] <= left * share[s] / total}
        if not capped:
            for s in sorted(active):
                alloc[s] = int(left * share[s] / total)
            break
        for s in capped:
            alloc[s] = available[s]
            left -= available[s]
        active -= capped
    return alloc


def split_prefix(docs: Iterable[SampledDoc], first_bytes: int, second_bytes: int) -> tuple[list[SampledDoc], ...]:
    """Cut key-ordered documents into two consecutive parts: the first until it holds ``first_bytes`` of
    text, the second until it holds ``second_bytes``. The rest is not returned."""
    first: list[SampledDoc] = []
    second: list[SampledDoc] = []
    got1 = got2 = 0
    for doc in docs:
        if got1 < first_bytes:
            first.append(doc)
            got1 += doc.nbytes
        elif got2 < second_bytes:
            second.append(doc)
            got2 += doc.nbytes
        else:
            break
    return first, second


def training_lines(docs: Iterable[SampledDoc], max_line_bytes: int) -> Iterator[str]:
    """The lines sentencepiece trains on: every non-empty line of every document, lines longer than
    ``max_line_bytes`` cut into pieces that fit (sentencepiece skips over-long lines otherwise)."""
    step = max(1, max_line_bytes // 4)  # 4 bytes per character at most in UTF-8
    for doc in docs:
        for line in doc.text.split("\n"):
            if not line:
                continue
            if len(line) <= step or len(line.encode("utf-8")) <= max_line_bytes:
                yield line
            else:
                for i in range(0, len(line), step):
                    yield line[i : i + step]
