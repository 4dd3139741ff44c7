"""The curate stage: read raw collections, quarantine bad records, filter, write shards.

An array stage: each input file is a unit; its output shards are named after the unit's index, so
the output is identical whatever the number of tasks.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

from lmhpc.context import StageContext
from lmhpc.curate.config import InputSpec
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.readers import read_documents
from lmhpc.data.writers import ShardWriter
from lmhpc.runner import StageFailed


def input_files(ctx: StageContext) -> list[tuple[Path, int]]:
    """Every input file with the index of the input spec it matched, sorted and de-duplicated."""
    seen: dict[Path, int] = {}
    for i, spec in enumerate(ctx.cfg.curate.inputs):
        pattern = str(ctx.cfg.path(spec.path))
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise StageFailed(f"curate.inputs[{i}].path: no file matches {pattern}")
        for p in matches:
            seen.setdefault(p.resolve(), i)
    return sorted(seen.items())


def units(ctx: StageContext) -> list[str]:
    return [f"{i}:{p}" for p, i in input_files(ctx)]


def _parse_unit(ctx: StageContext, unit: str) -> tuple[InputSpec, Path]:
    i, path = unit.split(":", 1)
    return ctx.cfg.curate.inputs[int(i)], Path(path)


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    cfg = ctx.cfg.curate
    spec, path = _parse_unit(ctx, unit)
    out_dir = ctx.stage_dir / "data"
    quarantine = Quarantine(ctx.stage_dir / "quarantine" / f"{index:05d}.jsonl")
    writer = ShardWriter(out_dir, f"part-{index:05d}", max_bytes=int(cfg.shard_max_mb * 2**20))
    docs_in = docs_out = 0
    per_source: dict[str, dict[str, int]] = {}
    last_report = time.time()
    with quarantine, writer:
        for doc in read_documents(path, spec, quarantine, max_doc_bytes=cfg.max_doc_bytes,
                                  default_source=path.parent.name):
            docs_in += 1
            src = per_source.setdefault(doc.source, {"docs_in": 0, "docs_out": 0})
            src["docs_in"] += 1
            writer.write(doc)
            docs_out += 1
            src["docs_out"] += 1
            if time.time() - last_report > cfg.progress_every_s:
                ctx.log.info("unit %d: %d docs read, %d kept", index, docs_in, docs_out)
                last_report = time.time()
    bad = quarantine.total
    return {
        "docs_in": docs_in + bad,
        "docs_out": docs_out,
        "quarantined": bad,
        "quarantine_reasons": dict(quarantine.counts),
        "dropped": {},
        "bytes_out": writer.bytes_written,
        "shards": len(writer.close()),
        "per_source": per_source,
    }


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    limit = ctx.cfg.curate.max_bad_fraction
    if stats["docs_in"] and stats["quarantined"] / stats["docs_in"] > limit:
        raise StageFailed(
            f"curate: {stats['quarantined']} of {stats['docs_in']} records are bad "
            f"({stats['quarantine_reasons']}), more than curate.max_bad_fraction={limit}; "
            f"see {ctx.stage_dir / 'quarantine'}"
        )
    return stats
