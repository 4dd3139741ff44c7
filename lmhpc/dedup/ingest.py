"""Phase 0 when dedup reads raw inputs (``dedup.inputs``) instead of the curate stage's shards.

Each input file becomes one JSON-lines shard ``_ingest/part-<i>.jsonl.zst`` through the same readers the
curate stage uses (jsonl, parquet, WARC; bad records quarantined with their reason under
``quarantine/ingest-<i>.jsonl``), so the phases after it see shards like the curate stage's. Input
file ``i`` of the sorted, de-duplicated list is converted by rank ``i mod N``; a file already converted
from the same bytes (size and modification time) is skipped on a rerun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmhpc.data.inputs import InputSpec, NoInputFiles, expand_inputs
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.readers import read_documents
from lmhpc.data.writers import ShardWriter
from lmhpc.fsutil import read_json, write_json

INGEST_DIR = "_ingest"
ONE_SHARD = 2**62  # one output shard per input file, however large


def input_files(cfg: Any) -> list[tuple[Path, int]]:
    """The raw input files of ``dedup.inputs`` with the index of the spec that matched each."""
    return expand_inputs(cfg.dedup.inputs, cfg.path, "dedup.inputs")


def _stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def ingest_file(path: Path, spec: InputSpec, index: int, stage_dir: Path, max_doc_bytes: int) -> dict[str, Any]:
    """Convert one raw input file to ``_ingest/part-<index>.jsonl.zst``; returns its counts."""
    out_dir = stage_dir / INGEST_DIR
    for stale in out_dir.glob(f"part-{index:05d}-*"):
        stale.unlink()
    quarantine = Quarantine(stage_dir / "quarantine" / f"ingest-{index:05d}.jsonl")
    writer = ShardWriter(out_dir, f"part-{index:05d}", max_bytes=ONE_SHARD)
    with quarantine, writer:
        for doc in read_documents(path, spec, quarantine, max_doc_bytes=max_doc_bytes):
            writer.write(doc)
    paths = writer.close()
    return {"records": writer.docs_written + quarantine.total, "docs": writer.docs_written,
            "quarantined": quarantine.total, "quarantine_reasons": dict(quarantine.counts),
            "shards": [p.name for p in paths]}


def ingest_phase(ctx: Any, agree: Any) -> tuple[list[Path], dict[str, Any]]:
    """Collective: convert this rank's input files; returns every rank's shards (in input order) and the
    quarantine counts of the conversion, summed over all files (complete on every rank)."""
    try:
        files = input_files(ctx.cfg)
    except NoInputFiles as e:
        files, error = [], str(e)
    else:
        error = None
    agree("listing the raw inputs", error)
    out_dir = ctx.stage_dir / INGEST_DIR
    for r in range(-(-len(files) // ctx.world_size)):
        agree(f"before ingest round {r}", error)
        i = r * ctx.world_size + ctx.rank
        if i >= len(files):
            continue
        path, spec_index = files[i]
        marker = out_dir / f"{i:05d}.json"
        done = read_json(marker, default=None)
        if done and done.get("input") == _stamp(path):
            continue
        try:
            counts = ingest_file(path, ctx.cfg.dedup.inputs[spec_index], i, ctx.stage_dir, ctx.cfg.dedup.max_doc_bytes)
        except (OSError, ValueError) as e:
            error = f"cannot read {path}: {e}"
            continue
        write_json(marker, {"input": _stamp(path), "counts": counts})
        ctx.log.info("ingested %d/%d (%s): %d documents, %d quarantined", i + 1, len(files), path.name,
                     counts["docs"], counts["quarantined"])
    agree("while ingesting", error)
    shards: list[Path] = []
    totals: dict[str, Any] = {"files": len(files), "quarantined": 0, "quarantine_reasons": {}}
    for i in range(len(files)):
        counts = read_json(out_dir / f"{i:05d}.json")["counts"]
        shards += [out_dir / name for name in counts["shards"]]
        totals["quarantined"] += counts["quarantined"]
        for reason, n in counts["quarantine_reasons"].items():
            totals["quarantine_reasons"][reason] = totals["quarantine_reasons"].get(reason, 0) + n
    return shards, totals
