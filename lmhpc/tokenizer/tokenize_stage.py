"""The tokenize stage: encode the deduplicated shards into Megatron indexed datasets and write the blend.

An array stage: each dedup shard is a unit. A unit's documents are encoded in batches per source with
sentencepiece's multithreaded batch encoder (the end-of-document token appended), and written as one
``shards/<source>/part-<unit>.bin/.idx`` pair per source; a reader thread decodes and parses the shard
while the encoder runs. Units depend only on their shard, so the output is the same whatever the number of
tasks. ``finalize`` concatenates each source's parts in unit order into ``<source>.bin/.idx`` (or, with
``tokenize.output: shards``, keeps the parts), writes ``blend.json`` / ``data_args.txt`` and the token
analysis (``analysis.md``, and ``analysis`` in stats.json).

Empty documents are skipped and counted as ``dropped.empty_text``; text that cannot be encoded as UTF-8
(lone surrogates) is quarantined as ``unencodable_text``. Documents holding U+2581 (``▁``, sentencepiece's
space symbol) are encoded and counted in ``docs_with_space_symbol``: decoding turns that character into a
space, the one place where decode(encode(text)) differs from the text.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm

from lmhpc.context import StageContext
from lmhpc.data.blend import blend_entries, write_blend
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.writers import iter_jsonl_docs
from lmhpc.fsutil import read_json, write_json, write_text
from lmhpc.launch.preempt import Preempted
from lmhpc.runner import StageFailed, unit_marker
from lmhpc.tokenizer import indexed
from lmhpc.tokenizer.analysis import TokenTally, format_table, summarize_tally
from lmhpc.tokenizer.inputs import (
    MODEL_NAME,
    document_language,
    input_shards,
    safe_name,
    source_weights,
    threads_for,
)
from lmhpc.tokenizer.training import ModelFacts, model_facts

SHARDS_DIR = "shards"
ANALYSIS_DIR = "_analysis"
MERGED_MANIFEST = "_merged.json"
EMPTY_TEXT = "empty_text"
NO_TOKENS = "no_tokens"
UNENCODABLE = "unencodable_text"
SPACE_SYMBOL = "\u2581"

_MODELS: dict[str, tuple[spm.SentencePieceProcessor, ModelFacts]] = {}


def tokenizer_model(ctx: StageContext) -> tuple[Path, spm.SentencePieceProcessor, ModelFacts]:
    """The trained model of the tokenizer stage (loaded once per process)."""
    path = ctx.inputs["tokenizer"] / f"{MODEL_NAME}.model"
    if not path.is_file():
        raise StageFailed(f"tokenize: the tokenizer stage is complete but {path} is missing")
    key = str(path)
    if key not in _MODELS:
        sp = spm.SentencePieceProcessor(model_file=key)
        _MODELS[key] = (sp, model_facts(sp))
    sp, facts = _MODELS[key]
    return path, sp, facts


def output_dtype(ctx: StageContext, vocab_size: int) -> np.dtype:
    choice = ctx.cfg.tokenize.dtype
    if choice == "auto":
        return indexed.token_dtype(vocab_size)
    if choice == "uint16" and vocab_size > 65536:
        raise StageFailed(f"tokenize.dtype=uint16 cannot hold the ids of a {vocab_size}-token vocabulary")
    return np.dtype(choice)


def part_prefix(ctx: StageContext, source: str, index: int) -> Path:
    return ctx.stage_dir / SHARDS_DIR / safe_name(source) / f"part-{index:05d}"


def remove_stale_parts(ctx: StageContext, index: int) -> None:
    """Drop what an earlier, killed attempt at this unit left: temporary files and parts without a marker."""
    for source_dir in (ctx.stage_dir / SHARDS_DIR).glob("*"):
        for leftover in source_dir.glob(f".part-{index:05d}.*.tmp"):
            leftover.unlink(missing_ok=True)
        for suffix in (".idx", ".bin"):
            (source_dir / f"part-{index:05d}{suffix}").unlink(missing_ok=True)
    for leftover in (ctx.stage_dir / "quarantine").glob(f".{index:05d}.jsonl.*.tmp"):
        leftover.unlink(missing_ok=True)


def units(ctx: StageContext) -> list[str]:
    """One unit per document shard of the stage it reads."""
    return [str(p) for p in input_shards(ctx)]


def unit_file(ctx: StageContext, unit: str) -> Path:
    return Path(unit)


# --------------------------------------------------------------------------------------------
# one unit


@dataclass
class Batch:
    """Documents of one source, ready to encode."""

    source: str
    texts: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    nwords: list[int] = field(default_factory=list)
    size: int = 0


@dataclass
class ReadCounts:
    """What the reader saw besides the batches."""

    docs_in: int = 0
    space_symbol: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_by_source: dict[str, dict[str, int]] = field(default_factory=dict)


_END = object()


def read_batches(path: Path, quarantine: Quarantine, counts: ReadCounts, batch_docs: int, batch_bytes: int,
                 stop: threading.Event) -> Iterator[Batch]:
    """Documents of one shard grouped into per-source batches (full batches first, the rest at the end)."""
    pending: dict[str, Batch] = {}
    for line_no, doc in enumerate(iter_jsonl_docs(path), start=1):
        if stop.is_set():
            return
        counts.docs_in += 1
        reason = None
        if not doc.text:
            reason = EMPTY_TEXT
        else:
            try:
                nbytes = len(doc.text.encode("utf-8"))
            except UnicodeEncodeError as e:
                quarantine.add(UNENCODABLE, f"{path}:{line_no}", doc.text.encode("utf-8", "surrogatepass"),
                               f"document {doc.id!r}: {e}")
                continue
        if reason is not None:
            counts.dropped[reason] = counts.dropped.get(reason, 0) + 1
            by = counts.dropped_by_source.setdefault(doc.source, {})
            by[reason] = by.get(reason, 0) + 1
            continue
        if SPACE_SYMBOL in doc.text:
            counts.space_symbol += 1
        batch = pending.get(doc.source)
        if batch is None:
            batch = pending[doc.source] = Batch(doc.source)
        batch.texts.append(doc.text)
        batch.languages.append(document_language(doc))
        batch.nbytes.append(nbytes)
        batch.nwords.append(len(doc.text.split()))
        batch.size += nbytes
        if len(batch.texts) >= batch_docs or batch.size >= batch_bytes:
            yield pending.pop(doc.source)
    for source in sorted(pending):
        yield pending[source]


def _produce(out: queue.Queue, batches: Iterator[Batch], stop: threading.Event) -> None:
    try:
        for batch in batches:
            while not stop.is_set():
                try:
                    out.put(batch, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        out.put(_END)
    except BaseException as e:  # handed to the consumer, which re-raises it
        out.put(e)


def prefetched(batches: Iterator[Batch], stop: threading.Event, depth: int = 2) -> Iterator[Batch]:
    """Run ``batches`` in a thread (JSON parsing overlaps with encoding, which releases the GIL)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    thread = threading.Thread(target=_produce, args=(q, batches, stop), daemon=True, name="tokenize-reader")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def encode(sp: spm.SentencePieceProcessor, texts: list[str], append_eod: bool, threads: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts``, concatenated, and the number of tokens of each."""
    ids = sp.encode(texts, add_eos=append_eod, num_threads=threads, out_type="numpy")
    lengths = np.fromiter((x.shape[0] for x in ids), dtype=np.int64, count=len(ids))
    flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
    return flat, lengths


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    cfg = ctx.cfg.tokenize
    _, sp, facts = tokenizer_model(ctx)
    dtype = output_dtype(ctx, facts.vocab_size)
    threads = threads_for(ctx, cfg.num_threads)
    path = Path(unit)
    tally = TokenTally(facts.vocab_size)
    counts = ReadCounts()
    writers: dict[str, indexed.IndexedDatasetWriter] = {}
    per_source: dict[str, dict[str, int]] = {}
    stop = threading.Event()
    quarantine = Quarantine(ctx.stage_dir / "quarantine" / f"{index:05d}.jsonl")
    remove_stale_parts(ctx, index)
    encode_s = 0.0
    try:
        with quarantine:
            batches = read_batches(path, quarantine, counts, cfg.batch_docs, int(cfg.batch_mb * 1_000_000), stop)
            for batch in prefetched(batches, stop):
                if ctx.should_stop():
                    raise Preempted(f"tokenize unit {index}: stopping mid-shard; it will be redone")
                t0 = time.perf_counter()
                flat, lengths = encode(sp, batch.texts, cfg.append_eod, threads)
                encode_s += time.perf_counter() - t0
                keep = lengths > 0
                if not keep.all():  # text that produced no token at all (only possible without an EOD)
                    counts.dropped[NO_TOKENS] = counts.dropped.get(NO_TOKENS, 0) + int((~keep).sum())
                    lengths = lengths[keep]
                writer = writers.get(batch.source)
                if writer is None:
                    writer = writers[batch.source] = indexed.IndexedDatasetWriter(
                        part_prefix(ctx, batch.source, index), dtype)
                writer.add_sequences(flat, lengths)
                langs = [x for x, k in zip(batch.languages, keep) if k]
                nb = [x for x, k in zip(batch.nbytes, keep) if k]
                nw = [x for x, k in zip(batch.nwords, keep) if k]
                tally.add(batch.source, langs, flat, lengths, nb, nw, facts.eos_id if cfg.append_eod else None)
                row = per_source.setdefault(batch.source, {"docs": 0, "tokens": 0, "bytes": 0})
                row["docs"] += int(lengths.shape[0])
                row["tokens"] += int(flat.shape[0])
                row["bytes"] += sum(nb)
    except BaseException:
        stop.set()
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    tally.save(ctx.stage_dir / ANALYSIS_DIR / f"part-{index:05d}.npz")
    docs_out = sum(r["docs"] for r in per_source.values())
    tokens = sum(r["tokens"] for r in per_source.values())
    nbytes = sum(r["bytes"] for r in per_source.values())
    for source, reasons in counts.dropped_by_source.items():
        per_source.setdefault(source, {"docs": 0, "tokens": 0, "bytes": 0})
        per_source[source]["dropped"] = dict(reasons)
    return {
        "docs_in": counts.docs_in,
        "docs_out": docs_out,
        "quarantined": quarantine.total,
        "quarantine_reasons": dict(quarantine.counts),
        "dropped": dict(counts.dropped),
        "tokens": tokens,
        "bytes_in": nbytes,
        "docs_with_space_symbol": counts.space_symbol,
        "encode_s": round(encode_s, 3),
        "per_source": per_source,
    }


# --------------------------------------------------------------------------------------------
# finalize


def unit_sources(ctx: StageContext, n_units: int) -> list[list[str]]:
    """For each unit, the sources it wrote parts for (from its completion marker)."""
    out = []
    for i in range(n_units):
        stats = read_json(unit_marker(ctx.stage_dir, i))["stats"]
        out.append(sorted(s for s, row in stats.get("per_source", {}).items() if row.get("docs", 0) > 0))
    return out


def merge_sources(ctx: StageContext, parts: dict[str, list[Path]]) -> dict[str, Path]:
    """Concatenate each source's parts (in unit order) into ``<source>.bin/.idx``; then drop the parts.
    A manifest written after every merge lets a rerun skip work already done."""
    manifest_path = ctx.stage_dir / MERGED_MANIFEST
    done = read_json(manifest_path, default=None)
    out = {s: ctx.stage_dir / safe_name(s) for s in parts}
    if done is None:
        for source in sorted(parts):
            ctx.log.info("merging %d part(s) of source %s", len(parts[source]), source)
            indexed.merge(parts[source], out[source])
        write_json(manifest_path, {s: {"prefix": out[s].name, "parts": len(parts[s])} for s in sorted(parts)})
    else:
        missing = [s for s in parts if not indexed.exists(out[s])]
        if missing or sorted(done) != sorted(parts):
            raise StageFailed(f"tokenize: {manifest_path} says the merge is done but outputs differ: {missing}")
    shutil.rmtree(ctx.stage_dir / SHARDS_DIR, ignore_errors=True)
    return out


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    cfg = ctx.cfg.tokenize
    model_path, sp, facts = tokenizer_model(ctx)
    dtype = output_dtype(ctx, facts.vocab_size)
    n_units = int(stats["units"])
    per_unit = unit_sources(ctx, n_units)
    sources = sorted({s for us in per_unit for s in us})
    parts = {s: [part_prefix(ctx, s, i) for i in range(n_units) if s in per_unit[i]] for s in sources}
    if cfg.output == "per_source":
        prefixes = {s: [p] for s, p in merge_sources(ctx, parts).items()}
    else:
        prefixes = parts
    outputs: dict[str, Any] = {}
    for source in sources:
        rows = []
        for prefix in prefixes[source]:
            reader = indexed.IndexedDatasetReader(prefix)  # checks .bin against .idx
            rows.append({"prefix": str(prefix.relative_to(ctx.stage_dir)), "tokens": reader.index.num_tokens,
                         "docs": len(reader)})
        tokens, docs = sum(r["tokens"] for r in rows), sum(r["docs"] for r in rows)
        expected = stats["per_source"][source]
        if tokens != expected["tokens"] or docs != expected["docs"]:
            raise StageFailed(f"tokenize: {source}: outputs hold {docs} docs / {tokens} tokens, units wrote "
                              f"{expected['docs']} / {expected['tokens']}")
        outputs[source] = {"prefixes": rows, "tokens": tokens, "docs": docs}
    weights = source_weights(ctx, cfg.blend_weights)
    entries = blend_entries(outputs, weights, cfg.blend_mix)
    blend = write_blend(ctx.stage_dir, entries, outputs, {
        "mix": cfg.blend_mix,
        "dtype": dtype.name,
        "vocab_size": facts.vocab_size,
        "eod_id": facts.eos_id if cfg.append_eod else None,
        "append_eod": cfg.append_eod,
        "tokenizer_model": str(model_path),
    })

    tally = TokenTally(facts.vocab_size)
    for i in range(n_units):
        part = ctx.stage_dir / ANALYSIS_DIR / f"part-{i:05d}.npz"
        if part.exists():
            tally.merge(TokenTally.load(part))
    analysis = summarize_tally(tally, facts.pieces, facts.byte_mask, cfg.top_tokens)
    counts_table = ["### Tokens per source", "", "| source | docs | tokens | blend weight | prefixes |",
                    "|---|---|---|---|---|"]
    for source, row in outputs.items():
        counts_table.append(f"| {source} | {row['docs']} | {row['tokens']} | "
                            f"{blend['sources'][source]['weight']:.6f} | {len(row['prefixes'])} |")
    report = "\n".join(counts_table) + "\n\n" + format_table(analysis, "Tokens of the whole corpus")
    write_text(ctx.stage_dir / "analysis.md", report)
    print(report, flush=True)
    stats = dict(stats)
    stats.update(
        outputs=outputs,
        blend=str(ctx.stage_dir / "blend.json"),
        dtype=dtype.name,
        vocab_size=facts.vocab_size,
        analysis=analysis,
        tokens_per_s=round(stats.get("tokens", 0) / max(sum_unit_seconds(ctx, n_units), 1e-9), 1),
    )
    return stats


def sum_unit_seconds(ctx: StageContext, n_units: int) -> float:
    return sum(float(read_json(unit_marker(ctx.stage_dir, i))["stats"].get("seconds", 0.0)) for i in range(n_units))
