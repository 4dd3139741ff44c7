"""The dedup stage: exact, then MinHash near-duplicate removal over the curated shards, as one MPI job.

Rank ``r`` of ``N`` holds the input shards ``r, r + N, ...`` of the sorted curate output. Three
phases, each resumable:

1. sign: per shard, hashes, signatures and band keys to ``_work/signed/`` (skipped when present);
2. decide: the all-rank exchanges of :mod:`lmhpc.dedup.decide` (skipped once ``_work/decided.json``
   exists), plus the inspection file ``clusters.json``;
3. write: per shard, the kept documents to ``data/part-<shard>-<k>.jsonl.zst`` (skipped when marked).

A rerun after a killed rank redoes only what is not complete; the output is byte-identical to a clean
run, and identical for any number of ranks.
"""

from __future__ import annotations

import hashlib
import math
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from lmhpc.context import StageContext
from lmhpc.dedup.decide import EDGE_REC, Decider
from lmhpc.dedup.exchange import Exchanger
from lmhpc.dedup.ingest import INGEST_DIR, ingest_phase
from lmhpc.dedup.settings import DedupSettings
from lmhpc.dedup.sign import DamagedShard, iter_shard, sign_shard
from lmhpc.dedup.sizing import estimate, memory_figures
from lmhpc.dedup.workdir import WorkDir, key_line, key_shard
from lmhpc.dedup.write import DROP_REASONS, InputChanged, write_shard
from lmhpc.fsutil import read_json, write_json
from lmhpc.launch.preempt import Preempted
from lmhpc.runner import StageFailed, merge_stats

SAMPLE_TEXT_CHARS = 400


def input_shards(ctx: StageContext) -> list[Path]:
    """The curated shards, sorted: shard ``i`` is the ``i``-th file."""
    data = ctx.inputs["curate"] / "data"
    return sorted(p for p in data.glob("part-*.jsonl*") if p.is_file())


def _shards(ctx: StageContext) -> tuple[list[Path], dict[str, Any]]:
    """The shards to deduplicate and what reading raw inputs quarantined (nothing for curated shards)."""
    if ctx.cfg.dedup.inputs:
        return ingest_phase(ctx, lambda where, error=None: _agree(ctx, where, error))
    return input_shards(ctx), {}


def inputs_digest(shards: list[Path]) -> str:
    """Names, sizes and modification times of the input shards: changes when the curate output does."""
    h = hashlib.sha256()
    for p in shards:
        st = p.stat()
        h.update(f"{p.name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _source_stamp(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": path.name, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _rounds(ctx: StageContext, n_shards: int) -> range:
    return range(math.ceil(n_shards / ctx.world_size))


def _agree(ctx: StageContext, where: str, error: str | None = None) -> None:
    """Collective: every rank learns whether any rank failed (then all raise StageFailed, so no rank is
    left waiting in a collective) or got a preemption signal (then all raise Preempted)."""
    states = ctx.comm.allgather((ctx.should_stop(), error))
    errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(states) if e]
    if errors:
        raise StageFailed("dedup failed " + where + ": " + "; ".join(errors))
    if any(stop for stop, _ in states):
        raise Preempted(f"dedup: stopping {where}")


# ------------------------------------------------------------------------------------------ phase 1


def sign_phase(ctx: StageContext, shards: list[Path], settings: DedupSettings, work: WorkDir) -> dict[str, Any]:
    """Sign this rank's shards that are not signed yet (with these settings and this input)."""
    fingerprint = settings.fingerprint()
    signed = skipped = docs = 0
    cpu = 0.0
    error = None
    for r in _rounds(ctx, len(shards)):
        _agree(ctx, f"before signing round {r}", error)
        i = r * ctx.world_size + ctx.rank
        if i >= len(shards):
            continue
        stamp = _source_stamp(shards[i])
        meta = work.signed_meta(i)
        if meta and meta.get("fingerprint") == fingerprint and all(meta.get(k) == v for k, v in stamp.items()):
            skipped += 1
            continue
        try:
            result = sign_shard(shards[i], settings, ctx.cfg.dedup.signature_batch_docs)
        except DamagedShard as e:
            error = str(e)
            continue
        result.meta.update(stamp, fingerprint=fingerprint)
        work.save_signed(i, result)
        signed += 1
        docs += result.meta["signed"]
        cpu += result.meta["cpu_s"]
        ctx.log.info("signed shard %d/%d (%s): %d docs in %.2fs cpu", i + 1, len(shards), shards[i].name,
                     result.meta["docs"], result.meta["cpu_s"])
    _agree(ctx, "while signing", error)
    return {"shards_signed": signed, "shards_already_signed": skipped, "docs_signed": docs, "sign_cpu_s": cpu}


# ------------------------------------------------------------------------------------------ phase 2


def _samples(ctx: StageContext, shards: list[Path], keys: list[int]) -> dict[int, dict[str, Any]]:
    """id, source, url and the start of the text of the wanted documents held on this rank."""
    wanted: dict[int, dict[int, int]] = {}
    for k in keys:
        s, line = int(key_shard([k])[0]), int(key_line([k])[0])
        if s % ctx.world_size == ctx.rank:
            wanted.setdefault(s, {})[line] = k
    found: dict[int, dict[str, Any]] = {}
    for s, lines in sorted(wanted.items()):
        last = max(lines)
        for line, doc in enumerate(iter_shard(shards[s])):
            if line in lines:
                found[lines[line]] = {"id": doc.id, "source": doc.source, "url": doc.url,
                                      "text": doc.text[:SAMPLE_TEXT_CHARS] if isinstance(doc.text, str) else None}
            if line >= last:
                break
    return found


def _inspection(ctx: StageContext, shards: list[Path], summary: dict[str, Any]) -> dict[str, Any]:
    """Collective: the largest groups with their sample members' ids and texts (complete on rank 0)."""
    groups = (summary.get("exact", {}).get("largest", []) + summary.get("near", {}).get("largest", [])
              if ctx.rank == 0 else [])
    keys = ctx.comm.bcast(sorted({k for g in groups for k in g["members"]}), root=0)
    gathered = ctx.comm.gather(_samples(ctx, shards, keys), root=0)
    if ctx.rank != 0:
        return {}
    docs: dict[int, dict[str, Any]] = {}
    for part in gathered:
        docs.update(part)
    out: dict[str, Any] = {}
    for kind in ("exact", "near"):
        listed = []
        for g in summary.get(kind, {}).get("largest", []):
            listed.append({"size": g["size"], "kept": docs[g["kept"]],
                           "members": [docs[k] for k in g["members"] if k != g["kept"]]})
            g["kept_id"] = docs[g["kept"]]["id"]
            g["member_ids"] = [docs[k]["id"] for k in g["members"]]
            del g["kept"], g["members"]
        out[kind] = listed
    return out


def decide_phase(ctx: StageContext, shards: list[Path], settings: DedupSettings, work: WorkDir,
                 digest: str) -> dict[str, Any]:
    """Run phase 2 unless a complete one for these settings and inputs is on disk; returns its summary."""
    fingerprint = settings.decision_fingerprint()
    done = read_json(work.decided_path, default=None)
    if done and done.get("fingerprint") == fingerprint and done.get("inputs") == digest:
        return {**done, "reused": True}
    _agree(ctx, "before the exchange phase")
    cfg = ctx.cfg.dedup
    exchanger = Exchanger(ctx.comm, int(cfg.exchange_max_mb * 2**20))
    mine = [i for i in range(len(shards)) if i % ctx.world_size == ctx.rank]
    decider = Decider(settings, work, mine, exchanger, cfg.minhash.bands_per_round, cfg.largest_clusters,
                      cfg.samples_per_cluster)
    summary = decider.run()
    inspection = _inspection(ctx, shards, summary)
    ctx.comm.Barrier()  # every rank's decision files are in place
    if ctx.rank == 0:
        write_json(ctx.stage_dir / "clusters.json", inspection)
        summary.update(fingerprint=fingerprint, inputs=digest)
        write_json(work.decided_path, summary)
    summary = ctx.comm.bcast(summary, root=0)
    return {**summary, "reused": False}


# ------------------------------------------------------------------------------------------ phase 3


def write_phase(ctx: StageContext, shards: list[Path], settings: DedupSettings, work: WorkDir,
                decision_stamp: str) -> dict[str, int]:
    """Write this rank's shards whose output is not complete for the current decisions."""
    written = skipped = 0
    max_bytes = int(ctx.cfg.dedup.shard_max_mb * 2**20)
    error = None
    for r in _rounds(ctx, len(shards)):
        _agree(ctx, f"before writing round {r}", error)
        i = r * ctx.world_size + ctx.rank
        if i >= len(shards):
            continue
        marker = read_json(work.written_path(i), default=None)
        if marker and marker.get("decisions") == decision_stamp:
            skipped += 1
            continue
        signed = work.load_signed(i)
        try:
            stats = write_shard(shards[i], i, ctx.stage_dir, signed.status, work.load_decisions(i),
                                settings.drop_empty, max_bytes)
        except (DamagedShard, InputChanged) as e:
            error = str(e)
            continue
        write_json(work.written_path(i), {"decisions": decision_stamp, "stats": stats})
        written += 1
    _agree(ctx, "while writing", error)
    return {"shards_written": written, "shards_already_written": skipped}


# ------------------------------------------------------------------------------------------ the stage


def run(ctx: StageContext) -> dict[str, Any]:
    """Deduplicate the curated shards; rank 0 returns the stage's stats.

    Failures that every rank learns of together (bad input, preemption) end the stage on all ranks; any
    other error on one rank aborts the whole MPI job, so no rank is left waiting in a collective.
    """
    if ctx.comm is None:
        from mpi4py import MPI

        ctx.comm = MPI.COMM_SELF
    try:
        return _run(ctx)
    except (Preempted, StageFailed):
        raise
    except BaseException:
        if ctx.world_size > 1:
            ctx.log.exception("dedup: unexpected error on rank %d; aborting all %d ranks", ctx.rank, ctx.world_size)
            ctx.comm.Abort(1)
        raise


def _run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.cfg.dedup
    settings = DedupSettings.from_config(cfg, ctx.cfg.run.seed)
    work = WorkDir(ctx.stage_dir)
    shards, ingested = _shards(ctx)
    digest = inputs_digest(shards)
    if ctx.rank == 0:
        work.clean_partial()
        ctx.log.info("dedup: %d shards on %d ranks; exact=%s, minhash=%s (%d perms, %d bands x %d rows, "
                     "threshold %.2f, verify=%s)", len(shards), ctx.world_size, settings.exact, settings.near,
                     settings.num_perm, settings.bands, settings.rows, settings.threshold, settings.verify)
    ctx.comm.Barrier()

    t0 = time.time()
    sign_stats = sign_phase(ctx, shards, settings, work)
    ctx.comm.Barrier()
    t1 = time.time()
    summary = decide_phase(ctx, shards, settings, work, digest)
    t2 = time.time()
    write_stats = write_phase(ctx, shards, settings, work, f"{summary['fingerprint']}:{digest}")
    ctx.comm.Barrier()
    t3 = time.time()

    local = {**sign_stats, **write_stats, "rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    per_rank = ctx.comm.gather(local, root=0)
    if ctx.rank != 0:
        return {}
    stats = _stage_stats(shards, settings, work, summary, per_rank,
                         {"sign": t1 - t0, "decide": t2 - t1, "write": t3 - t2})
    if ingested:
        # records of the raw inputs that never became documents: in, and quarantined
        stats["docs_in"] += ingested["quarantined"]
        stats["quarantined"] += ingested["quarantined"]
        stats["quarantine_reasons"] = merge_stats(stats["quarantine_reasons"], ingested["quarantine_reasons"])
        stats["raw_input_files"] = ingested["files"]
    ctx.log.info("%s", describe(stats))
    if not cfg.keep_work:
        work.remove()
        shutil.rmtree(ctx.stage_dir / INGEST_DIR, ignore_errors=True)
    return stats


def _stage_stats(shards: list[Path], settings: DedupSettings, work: WorkDir, summary: dict[str, Any],
                 per_rank: list[dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    totals: dict[str, Any] = {"docs_in": 0, "docs_out": 0, "quarantined": 0, "quarantine_reasons": {},
                              "dropped": {r: 0 for r in DROP_REASONS}, "bytes_out": 0, "shards_out": 0,
                              "kept_without_minhash": 0}
    text_bytes = work_bytes = signed_docs = 0
    sign_cpu = 0.0
    for i in range(len(shards)):
        marker = read_json(work.written_path(i))
        if marker is None:
            raise StageFailed(f"dedup: shard {i} ({shards[i].name}) has no output marker")
        totals = merge_stats(totals, marker["stats"])
        meta = work.signed_meta(i) or {}
        text_bytes += meta.get("text_bytes", 0)
        signed_docs += meta.get("signed", 0)
        sign_cpu += meta.get("cpu_s", 0.0)
        work_bytes += sum(f.stat().st_size for f in work.signed_dir(i).iterdir())
    near = summary.get("near", {})
    figures = memory_figures(totals["docs_in"], text_bytes, work_bytes, summary.get("ranks", []),
                             [r["rss_bytes"] for r in per_rank])
    docs = max(totals["docs_in"], 1)
    edges = near.get("verified_pairs", near.get("candidate_pairs", 0))
    # rank 0 holds the gathered edges (32 bytes each) and its graph (node keys, labels, CSR: ~24 bytes/edge)
    cluster_bytes_per_doc = edges * (EDGE_REC.itemsize + 24) / docs
    signed_share = signed_docs / docs
    # what one document puts on the wire when every record leaves its rank: its exact-hash record, one
    # band record per band, its share of the candidate pairs (two hops, the second with a signature),
    # of the gathered edges and of the scattered drops
    off_rank = (32 + 24 * settings.bands * signed_share
                + near.get("candidate_pairs", 0) / docs * (2 * EDGE_REC.itemsize + 4 * settings.num_perm)
                + edges / docs * EDGE_REC.itemsize + sum(totals["dropped"].values()) / docs * 24)
    figures["rank0_cluster_bytes_per_doc"] = round(cluster_bytes_per_doc, 2)
    figures["off_rank_bytes_per_doc_model"] = round(off_rank, 1)
    figures["estimate_1tb"] = [estimate(figures, n, len(per_rank), off_rank,
                                        cluster_bytes_per_doc=cluster_bytes_per_doc)
                               for n in (16, 64, 256)]
    resumed = {
        "shards_already_signed": sum(r["shards_already_signed"] for r in per_rank),
        "shards_already_written": sum(r["shards_already_written"] for r in per_rank),
        "decisions_reused": bool(summary.get("reused")),
    }
    return {
        **totals,
        "shards_in": len(shards),
        "ranks": len(per_rank),
        "settings": {k: v for k, v in settings.to_dict().items() if not k.endswith("_norm")},
        "exact": summary.get("exact", {}),
        "near": near,
        "memory": figures,
        "seconds": {k: round(v, 3) for k, v in seconds.items()} | {"exchange": summary.get("seconds", {})},
        "throughput": {
            "signatures_per_s_per_core": round(signed_docs / sign_cpu, 1) if sign_cpu else None,
            "text_mb_per_s_per_core": round(text_bytes / 2**20 / sign_cpu, 2) if sign_cpu else None,
        },
        "resumed": resumed,
    }


def describe(stats: dict[str, Any]) -> str:
    """One line saying what the stage removed."""
    d = stats.get("dropped", {})
    return (f"dedup: {stats.get('docs_in', 0)} docs in, {stats.get('docs_out', 0)} kept; removed "
            f"{d.get('exact', 0)} exact and {d.get('near', 0)} near duplicates, {d.get('empty', 0)} empty; "
            f"{stats.get('quarantined', 0)} quarantined")

