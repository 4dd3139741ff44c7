"""Reading our own shards for the report: tolerant line readers and a bounded, seeded sample.

The sample takes an equal share of the budget from every shard (what a small shard leaves goes to the shards
after it), drawn uniformly (reservoir sampling, seeded by the shard's name) from the shard's first
``SCAN_FACTOR`` × share documents, so its cost is bounded by the budget whatever the size of the run, and every
shard (every input file, every source) is represented.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmhpc.data.writers import open_compressed_reader

log = logging.getLogger("lmhpc.report")

SCAN_FACTOR = 4


def shard_files(folder: Path, pattern: str = "*.jsonl*") -> list[Path]:
    """The finished shards of a stage folder, sorted (temporary ``.``-files left out)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, record)`` for each JSON object of a shard; the index counts non-blank lines from 0 (as the
    dedup stage numbers documents). A damaged line is skipped and a damaged file ends the iteration; both are
    logged, never raised."""
    index = 0
    try:
        with open_compressed_reader(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    log.warning("%s:%d: not a JSON line; skipped", path, line_no)
                    index += 1
                    continue
                if isinstance(record, dict):
                    yield index, record
                index += 1
    except (OSError, EOFError, ValueError) as e:
        log.warning("%s: cannot read on (%s); using the %d records before", path, e, index)


@dataclass(frozen=True)
class SampleNote:
    """How a sample was drawn, for the page: documents taken, documents scanned, shards, the quota."""

    taken: int = 0
    scanned: int = 0
    shards: int = 0
    quota: int = 0
    complete: bool = True  # every document of every shard was scanned

    def describe(self, total: int | None = None) -> str:
        of = f" of {total:,}" if total else ""
        if not self.shards:
            return "no shards to sample"
        if self.complete and self.taken == self.scanned:
            return f"all {self.taken:,}{of} documents ({self.shards} shards)"
        return (f"a seeded sample of {self.taken:,}{of} documents from {self.shards} shards: each shard's share (at "
                f"most {self.quota:,}) drawn uniformly from its first {SCAN_FACTOR}× as many documents")


Picked = list[tuple[int, int, dict[str, Any]]]


def sample_records(paths: list[Path], budget: int, seed: int) -> tuple[Picked, SampleNote]:
    """``[(shard position, record index, record)]`` — at most ``budget`` records spread over ``paths``."""
    if not paths or budget <= 0:
        return [], SampleNote(shards=len(paths))
    out: Picked = []
    scanned = 0
    complete = True
    largest = visited = 0
    for k, path in enumerate(paths):
        if len(out) >= budget:  # a budget smaller than the number of shards: the first shards only
            complete = False
            break
        # what smaller shards before left unused goes to the shards after them
        quota = math.ceil((budget - len(out)) / (len(paths) - k))
        visited += 1
        largest = max(largest, quota)
        scan = SCAN_FACTOR * quota
        rng = random.Random(f"{seed}:{path.name}")
        reservoir: list[tuple[int, dict[str, Any]]] = []
        seen = 0
        for index, record in iter_records(path):
            if seen >= scan:
                complete = False
                break
            seen += 1
            if len(reservoir) < quota:
                reservoir.append((index, record))
            else:
                j = rng.randrange(seen)
                if j < quota:
                    reservoir[j] = (index, record)
        scanned += seen
        out += [(k, index, record) for index, record in sorted(reservoir, key=lambda r: r[0])]
    return out, SampleNote(taken=len(out), scanned=scanned, shards=visited, quota=largest, complete=complete)
