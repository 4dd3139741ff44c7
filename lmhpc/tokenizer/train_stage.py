"""The tokenizer stage: train a sentencepiece BPE model (byte fallback) on a careful sample of the data.

The sample is drawn across every shard: per source, the documents with the smallest seeded keys (see
:mod:`lmhpc.tokenizer.sampling`), so it is the same whatever the number of readers and never just the head of
the data. Each source gets a share of ``tokenizer.sample_mb`` by its weight; a small source gives all it has
and the rest goes to the others. The first documents of each source (by key) are held out: the tokenizer
never sees them, and the analysis measures it on them, next to a tokenizer trained on that source alone.

Memory: the sample is held in memory, up to ``sample_mb + analysis.heldout_mb`` of text per source while
reading (a source may have to give the whole sample when the others are small), so about
``sources x (sample_mb + heldout_mb)`` at most, plus sentencepiece's own training state.

Outputs in the stage folder: ``tokenizer.model``, ``tokenizer.vocab``, the Hugging Face files
(``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``), megatron-core's
``tokenizer_metadata.json``, ``sample.json`` (the sample's size and composition), ``sample_ids.json`` (which
documents were trained on and which held out), ``analysis.md`` and, per source, ``analysis/<source>.model``.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmhpc.context import StageContext
from lmhpc.data.writers import iter_jsonl_docs
from lmhpc.fsutil import write_json, write_text
from lmhpc.runner import StageFailed
from lmhpc.tokenizer.analysis import TokenTally, format_table, summarize_tally
from lmhpc.tokenizer.config import TokenizerConfig
from lmhpc.tokenizer.hf_export import write_hf_tokenizer
from lmhpc.tokenizer.inputs import (
    MODEL_NAME,
    document_language,
    input_shards,
    safe_name,
    source_weights,
    threads_for,
)
from lmhpc.tokenizer.sampling import BottomKSample, SampledDoc, allocate, doc_key, split_prefix, training_lines
from lmhpc.tokenizer.training import VocabSizeError, load, model_facts, train_model

MB = 1_000_000


@dataclass
class ShardSample:
    """What one reader saw in its shards: the per-source samples and the sizes of everything it read."""

    samples: dict[str, BottomKSample] = field(default_factory=dict)
    seen: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # source -> language -> [docs, bytes]
    unencodable: int = 0

    def merge(self, other: ShardSample) -> None:
        for source, sample in other.samples.items():
            if source in self.samples:
                self.samples[source].merge(sample)
            else:
                self.samples[source] = sample
        for source, langs in other.seen.items():
            mine = self.seen.setdefault(source, {})
            for lang, (docs, nbytes) in langs.items():
                got = mine.setdefault(lang, [0, 0])
                got[0] += docs
                got[1] += nbytes
        self.unencodable += other.unencodable


def sample_shard(path: Path, seed: int, budget_bytes: int) -> ShardSample:
    """Read one shard and keep, per source, its bottom-k documents up to ``budget_bytes``."""
    out = ShardSample()
    for doc in iter_jsonl_docs(path):
        try:
            nbytes = len(doc.text.encode("utf-8"))
        except UnicodeEncodeError:
            out.unencodable += 1  # lone surrogates: the tokenize stage quarantines these
            continue
        lang = document_language(doc)
        seen = out.seen.setdefault(doc.source, {}).setdefault(lang, [0, 0])
        seen[0] += 1
        seen[1] += nbytes
        if nbytes == 0:
            continue
        sample = out.samples.get(doc.source)
        if sample is None:
            sample = out.samples[doc.source] = BottomKSample(budget_bytes)
        sample.add(SampledDoc(doc_key(seed, doc.id), doc.id, doc.text, doc.source, lang, nbytes))
    return out


def read_samples(shards: list[Path], seed: int, budget_bytes: int, workers: int) -> ShardSample:
    """Sample every shard (in ``workers`` processes) and merge; the result does not depend on ``workers``."""
    total = ShardSample()
    if workers <= 1 or len(shards) <= 1:
        for path in shards:
            total.merge(sample_shard(path, seed, budget_bytes))
        return total
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(shards)), mp_context=ctx) as pool:
        for part in pool.map(sample_shard, shards, [seed] * len(shards), [budget_bytes] * len(shards)):
            total.merge(part)
    return total


def composition(docs: list[SampledDoc]) -> dict[str, Any]:
    """Documents and bytes per source and per language of a list of sampled documents."""
    by_source: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "bytes": 0})
    by_language: dict[str, dict[str, int]] = defaultdict(lambda: {"docs": 0, "bytes": 0})
    for d in docs:
        for table, name in ((by_source, d.source), (by_language, d.language)):
            table[name]["docs"] += 1
            table[name]["bytes"] += d.nbytes
    return {
        "docs": len(docs),
        "bytes": sum(d.nbytes for d in docs),
        "by_source": {k: by_source[k] for k in sorted(by_source)},
        "by_language": {k: by_language[k] for k in sorted(by_language)},
    }


def tally_docs(sp: Any, docs: list[SampledDoc], vocab_size: int, threads: int) -> TokenTally:
    """Encode documents and count their tokens per (source, language)."""
    tally = TokenTally(vocab_size)
    by_source: dict[str, list[SampledDoc]] = defaultdict(list)
    for d in docs:
        by_source[d.source].append(d)
    for source in sorted(by_source):
        group = by_source[source]
        ids = sp.encode([d.text for d in group], num_threads=threads, out_type="numpy")
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.concatenate(ids).astype(np.int64) if ids else np.zeros(0, np.int64)
        tally.add(source, [d.language for d in group], flat, lengths, [d.nbytes for d in group],
                  [len(d.text.split()) for d in group])
    return tally


def per_source_comparison(ctx: StageContext, cfg: TokenizerConfig, main_bpt: dict[str, float],
                          own_docs: dict[str, list[SampledDoc]], heldout: dict[str, list[SampledDoc]],
                          threads: int) -> dict[str, dict[str, Any]]:
    """Bytes per token of each source's held-out text under the main tokenizer and under one trained on that
    source alone. ``main_vs_own`` < 1 means the shared tokenizer serves that source worse than its own."""
    out: dict[str, dict[str, Any]] = {}
    vocab = cfg.analysis.per_source_vocab_size or cfg.vocab_size
    for source in sorted(heldout):
        if not heldout[source] or not own_docs.get(source):
            continue
        prefix = ctx.stage_dir / "analysis" / safe_name(source)
        try:
            train_model(training_lines(own_docs[source], cfg.max_line_bytes), cfg, prefix, vocab, threads,
                        ctx.cfg.run.seed, hard_vocab_limit=False)
        except (RuntimeError, VocabSizeError) as e:
            out[source] = {"error": f"could not train a tokenizer on this source alone: {e}"}
            continue
        sp = load(Path(f"{prefix}.model"))
        facts = model_facts(sp)
        tally = tally_docs(sp, heldout[source], facts.vocab_size, threads)
        own = summarize_tally(tally, facts.pieces, facts.byte_mask, 0)["total"]
        out[source] = {
            "own_vocab_size": sp.get_piece_size(),
            "own_trained_bytes": sum(d.nbytes for d in own_docs[source]),
            "own_bytes_per_token": own["bytes_per_token"],
            "main_bytes_per_token": main_bpt.get(source, 0.0),
            "main_vs_own": round(main_bpt.get(source, 0.0) / own["bytes_per_token"], 4) if own["bytes_per_token"]
            else 0.0,
        }
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    """Draw the sample, train the tokenizer, export it, analyse it."""
    cfg = ctx.cfg.tokenizer
    started = time.time()
    shards = input_shards(ctx)
    workers = threads_for(ctx, cfg.read_workers)
    threads = cfg.num_threads
    sample_bytes = int(cfg.sample_mb * MB)
    heldout_cap = int(cfg.analysis.heldout_mb * MB)
    ctx.log.info("sampling %d shards with %d reader(s)", len(shards), workers)
    read = read_samples(shards, ctx.cfg.run.seed, sample_bytes + heldout_cap, workers)
    t_read = time.time() - started
    available = {s: sum(b for _, b in langs.values()) for s, langs in read.seen.items()}
    heldout_bytes = {s: min(heldout_cap, n // 10) for s, n in available.items()}
    weights = source_weights(ctx, cfg.source_weights)
    alloc = allocate(sample_bytes, {s: available[s] - heldout_bytes[s] for s in available}, weights, cfg.sample_mix)

    train_docs: list[SampledDoc] = []
    heldout: dict[str, list[SampledDoc]] = {}
    own_docs: dict[str, list[SampledDoc]] = {}
    for source in sorted(read.samples):
        docs = read.samples[source].docs()
        held, train = split_prefix(docs, heldout_bytes[source], alloc.get(source, 0))
        if held and not train and alloc.get(source, 0) > 0:  # too few documents to hold any out
            held, train = [], split_prefix(docs, alloc[source], 0)[0]
        heldout[source] = held
        train_docs.extend(train)
        own_bytes = min(sample_bytes, int(cfg.analysis.per_source_sample_mb * MB))
        own_docs[source] = split_prefix(docs, heldout_bytes[source], own_bytes)[1]
    train_docs.sort()
    if not train_docs:
        raise StageFailed(f"tokenizer: the sample is empty: no text in {len(shards)} shard(s) (weights {weights})")
    sample = composition(train_docs)
    sample["lines"] = sum(1 for _ in training_lines(train_docs, cfg.max_line_bytes))
    sample["mix"] = cfg.sample_mix
    sample["requested_bytes"] = sample_bytes
    for source, row in sample["by_source"].items():
        row.update(weight=weights.get(source, 1.0), share=round(row["bytes"] / max(sample["bytes"], 1), 6),
                   available_bytes=available[source], heldout_bytes=sum(d.nbytes for d in heldout[source]))
    sample["input"] = {s: {lang: {"docs": v[0], "bytes": v[1]} for lang, v in sorted(langs.items())}
                       for s, langs in sorted(read.seen.items())}
    unknown = sorted(set(cfg.source_weights) - set(available))
    if unknown:
        sample["weights_for_absent_sources"] = unknown
    ctx.log.info("sample: %d docs, %.1f MB (%s)", sample["docs"], sample["bytes"] / MB,
                 ", ".join(f"{s} {r['share']:.1%}" for s, r in sample["by_source"].items()))
    write_json(ctx.stage_dir / "sample.json", sample)
    write_json(ctx.stage_dir / "sample_ids.json", {"train": [d.id for d in train_docs],
                                                   "heldout": [d.id for s in sorted(heldout) for d in heldout[s]]})

    t0 = time.time()
    try:
        model_path = train_model(training_lines(train_docs, cfg.max_line_bytes), cfg,
                                 ctx.stage_dir / MODEL_NAME, cfg.vocab_size, threads, ctx.cfg.run.seed)
    except VocabSizeError as e:
        raise StageFailed(
            f"tokenizer: tokenizer.vocab_size does not fit the sample ({sample['bytes'] / MB:.2f} MB of text, "
            f"tokenizer.sample_mb={cfg.sample_mb}): {e}"
        ) from e
    t_train = time.time() - t0
    hf_files = write_hf_tokenizer(model_path, ctx.stage_dir)
    # lets megatron-core's MegatronTokenizer.from_pretrained(<this folder>/tokenizer.model) load it
    write_json(ctx.stage_dir / "tokenizer_metadata.json", {"library": "sentencepiece", "model_type": "gpt"})
    sp = load(model_path)
    facts = model_facts(sp)

    t0 = time.time()
    all_heldout = [d for s in sorted(heldout) for d in heldout[s]]
    analysis = summarize_tally(tally_docs(sp, all_heldout, facts.vocab_size, threads), facts.pieces,
                               facts.byte_mask, cfg.analysis.top_tokens)
    if cfg.analysis.per_source_tokenizers:
        main_bpt = {s: v["bytes_per_token"] for s, v in analysis.get("by_source", {}).items()}
        analysis["per_source_tokenizers"] = per_source_comparison(ctx, cfg, main_bpt, own_docs, heldout, threads)
    t_analysis = time.time() - t0
    table = format_table(analysis, "Tokenizer on held-out text (never trained on)",
                         analysis.get("per_source_tokenizers"))
    write_text(ctx.stage_dir / "analysis.md", table)
    print(table, flush=True)

    return {
        "tokenizer": {
            "model": str(model_path),
            "hf_files": [p.name for p in hf_files],
            "vocab_size": facts.vocab_size,
            "model_type": cfg.model_type,
            "byte_fallback": True,
            "byte_tokens": int(facts.byte_mask.sum()),
            "unk_id": facts.unk_id,
            "bos_id": facts.bos_id,
            "eos_id": facts.eos_id,
            "pad_id": facts.pad_id,
            "user_tokens": {t: sp.piece_to_id(t) for t in cfg.user_tokens},
            "control_tokens": {t: sp.piece_to_id(t) for t in cfg.control_tokens},
        },
        "sample": {k: v for k, v in sample.items() if k != "input"},
        "input": {"shards": len(shards), "docs": sum(v[0] for ls in read.seen.values() for v in ls.values()),
                  "bytes": sum(available.values()), "unencodable_docs": read.unencodable},
        "analysis": analysis,
        "timing": {"read_s": round(t_read, 3), "train_s": round(t_train, 3), "analysis_s": round(t_analysis, 3)},
    }
