"""Phase 3: write one input shard's kept documents, and account for every other one.

Output is named after the input shard (``data/part-<shard>-<k>.jsonl.zst``), so it does not depend
on the number of ranks. Beside it: ``dropped/<shard>.jsonl.zst`` lists every dropped document (id,
reason, the id of the document kept in its place, its group's size) and ``quarantine/<shard>.jsonl``
holds records that are not usable documents.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from lmhpc.data.quarantine import Quarantine
from lmhpc.data.writers import ShardWriter, compressed_writer
from lmhpc.dedup.sign import bad_reason, iter_shard
from lmhpc.dedup.workdir import BAD, EMPTY, SHORT
from lmhpc.fsutil import atomic_path

DROP_REASONS = ("exact", "near", "empty")


class InputChanged(RuntimeError):
    """A curated shard no longer holds the documents that were signed."""


_BAD_DETAIL = {
    "text_not_string": "the text field is not a string",
    "id_not_string": "the id field is not a string",
    "text_not_utf8": "the text holds characters that cannot be written as UTF-8 (lone surrogates)",
}


def remove_stale_outputs(stage_dir: Path, shard: int) -> None:
    """Delete what an interrupted attempt may have left for this shard (finished or temporary files)."""
    stale = [("data", f"part-{shard:05d}-*"), ("data", f".part-{shard:05d}-*"), ("dropped", f".{shard:05d}.*"),
             ("quarantine", f"{shard:05d}.*"), ("quarantine", f".{shard:05d}.*")]
    for folder, pattern in stale:
        for p in (stage_dir / folder).glob(pattern):
            p.unlink()


def write_shard(src: Path, shard: int, stage_dir: Path, status: np.ndarray, decisions: dict[str, list],
                drop_empty: bool, max_bytes: int) -> dict[str, Any]:
    """Copy the kept documents of ``src`` to the stage's data folder; return the shard's accounting."""
    data_dir = stage_dir / "data"
    remove_stale_outputs(stage_dir, shard)
    drop_at = {line: (why, kept, size) for line, why, kept, size in
               zip(decisions["lines"], decisions["reasons"], decisions["kept_ids"], decisions["group_sizes"])}
    dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
    docs_in = short = 0
    quarantine = Quarantine(stage_dir / "quarantine" / f"{shard:05d}.jsonl")
    writer = ShardWriter(data_dir, f"part-{shard:05d}", max_bytes=max_bytes)
    with atomic_path(stage_dir / "dropped" / f"{shard:05d}.jsonl.zst") as tmp, open(tmp, "wb") as raw, \
            compressed_writer(raw, "zst") as drops_out, quarantine, writer:
        for line, doc in enumerate(iter_shard(src)):
            docs_in += 1
            if line >= len(status):
                raise InputChanged(f"{src} has more documents than when it was signed; rerun dedup from scratch")
            st = int(status[line])
            if st == BAD:
                reason = bad_reason(doc) or "bad_document"
                raw = json.dumps(doc.to_dict(), ensure_ascii=True)  # ASCII: survives lone surrogates
                quarantine.add(reason, f"{src.name}:{line + 1}", raw, detail=_BAD_DETAIL.get(reason, reason))
                continue
            record: dict[str, Any] | None = None
            if st == EMPTY and drop_empty:
                record = {"id": doc.id, "line": line, "reason": "empty"}
            elif line in drop_at:
                why, kept, size = drop_at[line]
                record = {"id": doc.id, "line": line, "reason": why, "kept_id": kept, "group_size": size}
            if record is not None:
                dropped[record["reason"]] += 1
                drops_out.write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
                continue
            short += st == SHORT
            writer.write(doc)
        if docs_in != len(status):
            raise InputChanged(f"{src} has {docs_in} documents but {len(status)} were signed; rerun dedup from scratch")
    paths = writer.close()
    return {
        "docs_in": docs_in,
        "docs_out": writer.docs_written,
        "quarantined": quarantine.total,
        "quarantine_reasons": dict(quarantine.counts),
        "dropped": dict(dropped),
        "bytes_out": writer.bytes_written,
        "shards_out": len(paths),
        "kept_without_minhash": short,
    }
