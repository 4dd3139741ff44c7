"""The curate stage: read raw collections, quarantine bad records, filter, select, write shards.

An array stage: each input file is a unit; its output shards are named after the unit's index, so
the output is identical whatever the number of tasks. Per unit it writes
``data/part-<unit>-<k>.jsonl.zst`` (kept documents, with filter scores in ``metadata.scores``),
``quarantine/<unit>.jsonl`` (bad records), ``samples/unit-<unit>.jsonl`` (a few dropped documents per
reason) and, with ``write_dropped``, ``dropped/part-<unit>-<k>.jsonl.zst`` (every dropped document
with ``metadata.drop_reason``). ``finalize`` merges the samples into ``samples/<reason>.jsonl``,
writes ``report.txt`` and ``report/domains.tsv`` and prints the per-source, per-reason report.

A document whose text is empty or whitespace only is dropped as ``empty_text`` before the filters. A unit
fails with ``TooMuchBadInput`` (carrying its partial stats) as soon as its bad fraction passes
``curate.max_bad_fraction`` after ``bad_input.MIN_RECORDS`` records; ``finalize`` applies the same limit to
the whole stage.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from lmhpc.context import StageContext
from lmhpc.curate.bad_input import BadFractionGuard, TooMuchBadInput, check_fraction
from lmhpc.curate.config import CurateConfig, InputSpec
from lmhpc.curate.filters.chain import ChainSet
from lmhpc.curate.filters.domain import url_host
from lmhpc.curate.report import domain_table, format_report
from lmhpc.curate.selection import Selector
from lmhpc.data.documents import Document
from lmhpc.data.inputs import NoInputFiles, expand_inputs
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.readers import read_documents
from lmhpc.data.writers import ShardWriter
from lmhpc.fsutil import atomic_open, write_text
from lmhpc.launch.preempt import Preempted
from lmhpc.runner import StageFailed

DATA_DIR = "data"
DROPPED_DIR = "dropped"
SAMPLES_DIR = "samples"
STOP_CHECK_EVERY = 256  # documents between checks of the preemption flag
EMPTY_TEXT = "empty_text"


def input_files(ctx: StageContext) -> list[tuple[Path, int]]:
    """Every input file with the index of the input spec it matched, sorted and de-duplicated."""
    try:
        return expand_inputs(ctx.cfg.curate.inputs, ctx.cfg.path, "curate.inputs")
    except NoInputFiles as e:
        raise StageFailed(str(e)) from None


def units(ctx: StageContext) -> list[str]:
    """One unit per input file: ``"<spec index>:<path>"``."""
    return [f"{i}:{p}" for p, i in input_files(ctx)]


def unit_file(ctx: StageContext, unit: str) -> Path:
    """The input file a unit reads (frozen with the unit list at the stage's first start)."""
    return Path(unit.split(":", 1)[1])


def _parse_unit(ctx: StageContext, unit: str) -> tuple[InputSpec, Path]:
    i, path = unit.split(":", 1)
    return ctx.cfg.curate.inputs[int(i)], Path(path)


def _clear_unit_outputs(ctx: StageContext, index: int) -> None:
    """Remove what an earlier, interrupted attempt at this unit left (shards and temporary files)."""
    patterns = {
        DATA_DIR: (f"part-{index:05d}-*", f".part-{index:05d}-*"),
        DROPPED_DIR: (f"part-{index:05d}-*", f".part-{index:05d}-*"),
        "quarantine": (f".{index:05d}.jsonl.*",),
        SAMPLES_DIR: (f".unit-{index:05d}.jsonl.*",),
    }
    for folder, globs in patterns.items():
        for pattern in globs:
            for p in (ctx.stage_dir / folder).glob(pattern):
                p.unlink()


class SubsetCounts:
    """In/kept/quarantined/dropped counts of one subset (a source or a domain)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any]:
        sub = self.counts.get(key)
        if sub is None:
            sub = self.counts[key] = {"docs_in": 0, "docs_out": 0, "quarantined": 0, "dropped": {}}
        return sub

    def record(self, key: str, reason: str | None, chain: str) -> None:
        sub = self.get(key)
        sub["docs_in"] += 1
        sub.setdefault("chain", chain)
        if reason is None:
            sub["docs_out"] += 1
        else:
            sub["dropped"][reason] = sub["dropped"].get(reason, 0) + 1


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    """Read one input file, filter and select its documents, write the kept ones; return its stats.

    Raises ``TooMuchBadInput`` with the unit's partial stats when its bad fraction passes the limit.
    """
    cfg: CurateConfig = ctx.cfg.curate
    spec, path = _parse_unit(ctx, unit)
    _clear_unit_outputs(ctx, index)
    unit_run = _UnitRun(ctx, index, spec, path)
    try:
        unit_run.read()
    except TooMuchBadInput as exc:
        exc.stats = unit_run.stats()
        _clear_unit_outputs(ctx, index)  # the quarantine stays, as evidence
        raise
    samples = unit_run.chains.samples()
    for reason, docs in unit_run.stage_samples.items():
        samples.setdefault(reason, []).extend(docs)
    _write_samples(ctx.stage_dir / SAMPLES_DIR / f"unit-{index:05d}.jsonl", samples, cfg.samples_per_reason)
    return unit_run.stats()


class _UnitRun:
    """One unit being read: its writers, quarantine and counts."""

    def __init__(self, ctx: StageContext, index: int, spec: InputSpec, path: Path) -> None:
        cfg: CurateConfig = ctx.cfg.curate
        self.ctx, self.cfg, self.index, self.spec, self.path = ctx, cfg, index, spec, path
        self.chains = ChainSet(cfg.filters, Path(ctx.cfg.base_dir), cfg.samples_per_reason, cfg.write_scores)
        self.selector = Selector(cfg.selection, ctx.cfg.run.seed)
        qpath = ctx.stage_dir / "quarantine" / f"{index:05d}.jsonl"
        self.guard = BadFractionGuard(f"curate unit {index} ({path})", cfg.max_bad_fraction, str(qpath))
        self.quarantine = Quarantine(qpath, on_add=self._check_bad_fraction)
        max_bytes = int(cfg.shard_max_mb * 2**20)
        self.writer = ShardWriter(ctx.stage_dir / DATA_DIR, f"part-{index:05d}", max_bytes=max_bytes)
        self.dropped_writer = ShardWriter(ctx.stage_dir / DROPPED_DIR, f"part-{index:05d}", max_bytes=max_bytes)
        self.sources, self.domains = SubsetCounts(), SubsetCounts()
        self.stage_samples: dict[str, list[dict[str, Any]]] = {}  # drops decided here, not by a filter
        self.dropped: dict[str, int] = {}
        self.docs_read = 0

    def _check_bad_fraction(self, reason: str) -> None:
        q = self.quarantine
        self.guard.check(q.total, self.docs_read + q.total, dict(q.counts))

    def read(self) -> None:
        """Read, filter and write every document of the unit."""
        ctx, cfg, index, path = self.ctx, self.cfg, self.index, self.path
        started = last_report = time.time()
        progress = _progress_bar(index, path)
        with self.quarantine, self.writer, self.dropped_writer:
            for doc in read_documents(path, self.spec, self.quarantine, max_doc_bytes=cfg.max_doc_bytes,
                                      default_source=path.parent.name):
                self.docs_read += 1
                if self.docs_read % STOP_CHECK_EVERY == 0 and ctx.should_stop():
                    raise Preempted(f"stopping inside unit {index} ({path}); it is redone on restart")
                self._process(doc)
                if progress is not None:
                    progress.update(1)
                elif time.time() - last_report > cfg.progress_every_s:
                    ctx.log.info("unit %d: %d docs read, %d kept, %d dropped, %d quarantined (%.0f docs/s)", index,
                                 self.docs_read, self.writer.docs_written, sum(self.dropped.values()),
                                 self.quarantine.total, self.docs_read / max(time.time() - started, 1e-9))
                    last_report = time.time()
        if progress is not None:
            progress.close()

    def _process(self, doc: Document) -> None:
        """Filter and select one document, then count, sample and write it."""
        _, chain = self.chains.chain_for(doc)
        by_filter = False
        if not doc.text.strip():
            reason: str | None = EMPTY_TEXT
        else:
            reason = chain(doc)
            by_filter = reason is not None
            if reason is None:
                reason = self.selector.select(doc, self.spec.weight)
        if reason is not None and not by_filter:  # the filters keep their own samples
            kept = self.stage_samples.setdefault(reason, [])
            if len(kept) < self.cfg.samples_per_reason:
                kept.append(_sample(doc, reason))
        chain_names = ">".join(chain.names)
        self.sources.record(doc.source, reason, chain_names)
        host = url_host(doc.url)
        if host:
            self.domains.record(host, reason, chain_names)
        if reason is None:
            self.writer.write(doc)
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.cfg.write_dropped:
            doc.metadata["drop_reason"] = reason
            self.dropped_writer.write(doc)

    def stats(self) -> dict[str, Any]:
        """The unit's stats (partial when reading stopped early)."""
        quarantine = self.quarantine
        if quarantine.total:
            sub = self.sources.get(self.spec.source or self.path.parent.name)
            sub["docs_in"] += quarantine.total
            sub["quarantined"] += quarantine.total
            sub["quarantine_reasons"] = dict(quarantine.counts)
        filters = self.chains.stats()
        return {
            "docs_in": self.docs_read + quarantine.total,
            "docs_out": self.writer.docs_written,
            "quarantined": quarantine.total,
            "quarantine_reasons": dict(quarantine.counts),
            "dropped": dict(self.dropped),
            "bytes_out": self.writer.bytes_written,
            "shards": len(self.writer.close()),
            "dropped_shards": len(self.dropped_writer.close()),
            "filters": filters,
            "per_source": self.sources.counts,
            "per_domain": self.domains.counts,
            "filter_seconds": round(sum(f["seconds"] for f in filters.values()), 3),
        }


def _sample(doc: Document, reason: str) -> dict[str, Any]:
    from lmhpc.curate.filters.base import SAMPLE_TEXT_CHARS

    return {"id": doc.id, "source": doc.source, "url": doc.url, "reason": reason,
            "text": doc.text[:SAMPLE_TEXT_CHARS], "text_chars": len(doc.text),
            "scores": doc.metadata.get("scores", {})}


def _write_samples(path: Path, samples: dict[str, list[dict[str, Any]]], per_reason: int) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for reason in sorted(samples):
            for sample in samples[reason][:per_reason]:
                fh.write(json.dumps(sample, ensure_ascii=False, sort_keys=True) + "\n")


def _progress_bar(index: int, path: Path) -> Any:
    """A tqdm bar on an interactive terminal (the local executor); None in batch logs."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc=f"curate unit {index} ({path.name})", unit="doc", leave=False, mininterval=1.0)


def merge_samples(ctx: StageContext, n_units: int, per_reason: int) -> dict[str, int]:
    """``samples/<reason>.jsonl`` with the first ``per_reason`` drops of each reason in unit order."""
    by_reason: dict[str, list[str]] = {}
    folder = ctx.stage_dir / SAMPLES_DIR
    for index in range(n_units):
        path = folder / f"unit-{index:05d}.jsonl"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            reason = json.loads(line)["reason"]
            kept = by_reason.setdefault(reason, [])
            if len(kept) < per_reason:
                kept.append(line)
    for reason, lines in by_reason.items():
        name = reason.replace("/", "__")
        write_text(folder / f"{name}.jsonl", "\n".join(lines) + "\n", fsync=False)
    return {reason: len(lines) for reason, lines in sorted(by_reason.items())}


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    """Check the bad-input limit, merge drop samples, write and print the report."""
    cfg: CurateConfig = ctx.cfg.curate
    try:
        check_fraction("curate", stats["quarantined"], stats["docs_in"], cfg.max_bad_fraction,
                       stats.get("quarantine_reasons", {}), str(ctx.stage_dir / "quarantine"))
    except TooMuchBadInput as exc:
        exc.stats = stats
        raise
    stats["samples"] = merge_samples(ctx, stats.get("units", 0), cfg.samples_per_reason)
    report = format_report(stats, cfg.report_top_domains)
    write_text(ctx.stage_dir / "report.txt", report + "\n", fsync=False)
    write_text(ctx.stage_dir / "report" / "domains.tsv", domain_table(stats), fsync=False)
    print(report, flush=True)
    domains = stats.pop("per_domain", {})
    top = sorted(domains.items(), key=lambda kv: (-kv[1].get("docs_in", 0), kv[0]))[: cfg.report_top_domains]
    stats["per_domain_top"] = dict(top)
    stats["domains"] = len(domains)
    return stats
