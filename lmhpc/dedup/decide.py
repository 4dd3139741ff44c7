"""Phase 2: decide, across all ranks, which documents are exact or near duplicates of which.

1. Exact: each rank sends (128-bit hash, sort key, doc key) of its documents to the hash's owner rank
   (``alltoallv``); the owner sorts, keeps the first of each equal-hash group and returns the drops
   to the ranks that hold those documents.
2. Near: for the exact survivors, (band key, sort key, doc key) go to the band key's owner, in rounds
   of ``bands_per_round`` bands. Per bucket the owner emits star edges from the bucket's best
   document to every other member.
3. Verify (optional): an edge goes to the rank holding its second document, which attaches that
   signature (read from the memory-mapped work files), then to the rank holding the first, which
   keeps the edge when the estimated Jaccard reaches ``verify_threshold``.
4. Cluster: the verified edges are gathered on rank 0 (memory: 32 bytes per edge, plus about 40
   bytes per document that has an edge), whose connected components (scipy) are the near-duplicate
   clusters; the best document of each is kept, the drops are scattered back to their ranks.

Every choice depends only on document keys, hashes and scores, never on which rank held what, so the
kept set is identical for any number of ranks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmhpc.dedup.clusters import (
    DROP,
    components,
    drops_of_sorted_groups,
    group_sizes,
    group_starts,
    largest_groups,
    negated_quality,
    size_histogram,
)
from lmhpc.dedup.exchange import Exchanger
from lmhpc.dedup.settings import DedupSettings
from lmhpc.dedup.signatures import estimated_jaccard
from lmhpc.dedup.workdir import EMPTY, OK, SHORT, SignedShard, WorkDir, doc_key, key_line, key_shard

log = logging.getLogger("lmhpc.dedup")

EXACT_REC = np.dtype([("h0", "<u8"), ("h1", "<u8"), ("nq", "<f8"), ("key", "<u8")])
BAND_REC = np.dtype([("bucket", "<u8"), ("nq", "<f8"), ("key", "<u8")])
EDGE_REC = np.dtype([("a", "<u8"), ("b", "<u8"), ("nqa", "<f8"), ("nqb", "<f8")])


@dataclass
class MemoryMeter:
    """High-water mark of the bytes held in this phase's main arrays (records, edges, signatures)."""

    peak_bytes: int = 0
    where: str = ""

    def note(self, where: str, *arrays: np.ndarray) -> None:
        total = sum(int(a.nbytes) for a in arrays)
        if total > self.peak_bytes:
            self.peak_bytes, self.where = total, where


@dataclass
class LocalShards:
    """The signed shards this rank holds (memory-mapped), by shard index."""

    work: WorkDir
    shards: dict[int, SignedShard] = field(default_factory=dict)

    def signatures_of(self, keys: np.ndarray, num_perm: int) -> np.ndarray:
        """Signatures of documents held here, in the order of ``keys``."""
        out = np.empty((len(keys), num_perm), dtype=np.uint32)
        shards, lines = key_shard(keys), key_line(keys)
        for s in np.unique(shards):
            mask = shards == s
            out[mask] = self.shards[int(s)].signatures[lines[mask]]
        return out


def owner_of_shard(shards: np.ndarray, world: int) -> np.ndarray:
    """The rank that read (and writes) each shard: shards are dealt ``rank::world``."""
    return np.asarray(shards, dtype=np.int64) % world


def owner_of_hash(values: np.ndarray, world: int) -> np.ndarray:
    return (np.asarray(values, dtype=np.uint64) % np.uint64(world)).astype(np.int64)


class Decider:
    """Runs phase 2 on one rank. All ranks call :meth:`run` together."""

    def __init__(self, settings: DedupSettings, work: WorkDir, my_shards: list[int], exchanger: Exchanger,
                 bands_per_round: int, largest: int, samples: int) -> None:
        self.s = settings
        self.work = work
        self.ex = exchanger
        self.world = exchanger.size
        self.rank = exchanger.rank
        self.local = LocalShards(work, {i: work.load_signed(i) for i in my_shards})
        self.bands_per_round = bands_per_round or settings.bands
        self.largest = largest
        self.samples = samples
        self.meter = MemoryMeter()
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ helpers

    def _local_rows(self, statuses: tuple[int, ...], exclude: np.ndarray | None = None) -> list[tuple[int, np.ndarray]]:
        """(shard, rows) of the documents held here whose status is one of ``statuses``, minus ``exclude`` keys."""
        out = []
        for shard, signed in sorted(self.local.shards.items()):
            rows = np.flatnonzero(np.isin(signed.status, statuses))
            if exclude is not None and len(exclude):
                rows = rows[~np.isin(doc_key(shard, rows), exclude)]
            out.append((shard, rows))
        return out

    def _sum(self, value: int) -> int:
        return int(self.ex.comm.allreduce(int(value)))

    # ------------------------------------------------------------------ exact

    def exact(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Exact-duplicate drops of the documents held here, and global exact-group statistics (rank 0)."""
        statuses = (OK, SHORT) if self.s.drop_empty else (OK, SHORT, EMPTY)
        parts = []
        for shard, rows in self._local_rows(statuses):
            signed = self.local.shards[shard]
            rec = np.empty(len(rows), dtype=EXACT_REC)
            rec["h0"], rec["h1"] = signed.exact[rows, 0], signed.exact[rows, 1]
            rec["nq"] = negated_quality(signed.quality[rows])
            rec["key"] = doc_key(shard, rows)
            parts.append(rec)
        records = np.concatenate(parts) if parts else np.zeros(0, dtype=EXACT_REC)
        received = self.ex.alltoallv(records, owner_of_hash(records["h0"], self.world), "exact")
        self.meter.note("exact", records, received)
        del records
        order = np.lexsort((received["key"], received["nq"], received["h1"], received["h0"]))
        received = received[order]
        starts = group_starts(received["h0"], received["h1"])
        drops = drops_of_sorted_groups(received["key"], starts)
        sizes = group_sizes(drops)
        local_stats = {"hist": size_histogram(sizes), "groups": len(sizes), "docs": int(sizes.sum()),
                       "largest": largest_groups(drops, self.largest, self.samples)}
        gathered = self.ex.comm.gather(local_stats, root=0)
        mine = self.ex.alltoallv(drops, owner_of_shard(key_shard(drops["key"]), self.world), "exact")
        stats: dict[str, Any] = {}
        if self.rank == 0:
            stats = _merge_group_stats(gathered, self.largest)
        return mine, stats

    # ------------------------------------------------------------------ near

    def candidate_edges(self, exact_dropped: np.ndarray) -> np.ndarray:
        """Star edges of every band bucket with two or more documents, unique per bucket owner."""
        eligible = self._local_rows((OK,), exact_dropped["key"])
        edges = []
        for lo in range(0, self.s.bands, self.bands_per_round):
            hi = min(lo + self.bands_per_round, self.s.bands)
            parts = []
            for shard, rows in eligible:
                signed = self.local.shards[shard]
                width = hi - lo
                rec = np.empty(len(rows) * width, dtype=BAND_REC)
                rec["bucket"] = np.asarray(signed.band_keys[rows, lo:hi]).reshape(-1)
                rec["nq"] = np.repeat(negated_quality(signed.quality[rows]), width)
                rec["key"] = np.repeat(doc_key(shard, rows), width)
                parts.append(rec)
            records = np.concatenate(parts) if parts else np.zeros(0, dtype=BAND_REC)
            received = self.ex.alltoallv(records, owner_of_hash(records["bucket"], self.world), "bands")
            self.meter.note("bands", records, received, *edges)
            del records
            order = np.lexsort((received["key"], received["nq"], received["bucket"]))
            received = received[order]
            starts = group_starts(received["bucket"])
            sizes = np.diff(np.append(starts, len(received)))
            group_of_row = np.repeat(np.arange(len(starts)), sizes)
            first = starts[group_of_row]
            member = np.arange(len(received)) != first
            e = np.empty(int(member.sum()), dtype=EDGE_REC)
            e["a"], e["nqa"] = received["key"][first[member]], received["nq"][first[member]]
            e["b"], e["nqb"] = received["key"][member], received["nq"][member]
            edges.append(e)
        all_edges = np.concatenate(edges) if edges else np.zeros(0, dtype=EDGE_REC)
        return _unique_edges(all_edges)

    def verify(self, edges: np.ndarray) -> np.ndarray:
        """Edges whose estimated Jaccard reaches the verify threshold (two hops: b's rank, then a's)."""
        at_b = _unique_edges(self.ex.alltoallv(edges, owner_of_shard(key_shard(edges["b"]), self.world), "verify"))
        self.counts["candidate_pairs"] = self._sum(len(at_b))
        rec_dtype = np.dtype(EDGE_REC.descr + [("sig", "<u4", (self.s.num_perm,))])
        with_sig = np.empty(len(at_b), dtype=rec_dtype)
        for name in EDGE_REC.names:
            with_sig[name] = at_b[name]
        with_sig["sig"] = self.local.signatures_of(at_b["b"], self.s.num_perm)
        at_a = self.ex.alltoallv(with_sig, owner_of_shard(key_shard(with_sig["a"]), self.world), "verify")
        self.meter.note("verify", with_sig, at_a, edges)
        del with_sig
        similarity = estimated_jaccard(self.local.signatures_of(at_a["a"], self.s.num_perm), at_a["sig"])
        passed = similarity >= self.s.verify_threshold - 1e-12
        self.counts["verified_pairs"] = self._sum(int(passed.sum()))
        out = np.empty(int(passed.sum()), dtype=EDGE_REC)
        for name in EDGE_REC.names:
            out[name] = at_a[name][passed]
        return out

    def near(self, exact_dropped: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Near-duplicate drops of the documents held here, and cluster statistics (rank 0)."""
        edges = self.candidate_edges(exact_dropped)
        if self.s.verify:
            edges = self.verify(edges)
        else:
            self.counts["candidate_pairs"] = self._sum(len(edges))
        gathered = self.ex.gather(edges, "gather")
        stats: dict[str, Any] = {}
        drops = dest = None
        if self.rank == 0:
            assert gathered is not None
            gathered = _unique_edges(gathered)
            if not self.s.verify:
                self.counts["candidate_pairs"] = len(gathered)
            self.meter.note("cluster", gathered)
            drops = components(gathered["a"], gathered["b"], gathered["nqa"], gathered["nqb"])
            sizes = group_sizes(drops)
            stats = {"clusters": len(sizes), "docs_in_clusters": int(sizes.sum()), "size_hist": size_histogram(sizes),
                     "largest": largest_groups(drops, self.largest, self.samples)}
            dest = owner_of_shard(key_shard(drops["key"]), self.world)
        mine = self.ex.scatter(drops, dest, "scatter")
        return mine, stats

    # ------------------------------------------------------------------ decisions

    def kept_ids(self, drops: np.ndarray) -> dict[int, str]:
        """The id of every kept document that one of the drops held here points to."""
        wanted = np.unique(drops["kept"])
        dest = owner_of_shard(key_shard(wanted), self.world)
        asks = self.ex.exchange_objects([wanted[dest == r].tolist() for r in range(self.world)], "ids")
        ids_cache: dict[int, list[str]] = {}
        answers = []
        for keys in asks:
            out = []
            for k in keys:
                shard, line = int(k) >> 32, int(k) & 0xFFFFFFFF
                if shard not in ids_cache:
                    ids_cache[shard] = self.work.load_ids(shard)
                out.append(ids_cache[shard][line])
            answers.append(out)
        replies = self.ex.exchange_objects(answers, "ids")
        found: dict[int, str] = {}
        for r in range(self.world):
            found.update(zip([int(k) for k in wanted[dest == r]], replies[r]))
        return found

    def save_decisions(self, exact_drops: np.ndarray, near_drops: np.ndarray) -> None:
        """One decisions file per shard held here: the dropped lines, why, and which document was kept."""
        reason = np.concatenate([np.full(len(exact_drops), "exact"), np.full(len(near_drops), "near")])
        drops = np.concatenate([exact_drops, near_drops]) if len(exact_drops) + len(near_drops) else np.zeros(0, DROP)
        ids = self.kept_ids(drops)
        shards = key_shard(drops["key"])
        for shard in sorted(self.local.shards):
            mask = shards == shard
            d, why = drops[mask], reason[mask]
            order = np.argsort(d["key"], kind="stable")
            d, why = d[order], why[order]
            self.work.save_decisions(shard, {
                "lines": key_line(d["key"]).tolist(),
                "reasons": why.tolist(),
                "kept_keys": d["kept"].tolist(),
                "kept_ids": [ids[int(k)] for k in d["kept"]],
                "group_sizes": d["size"].tolist(),
            })

    def run(self) -> dict[str, Any]:
        """Phase 2 on this rank; returns the statistics (complete on rank 0)."""
        t0 = time.time()
        if self.s.exact:
            exact_drops, exact_stats = self.exact()
        else:
            exact_drops, exact_stats = np.zeros(0, dtype=DROP), {}
        t_exact = time.time() - t0
        if self.s.near:
            near_drops, near_stats = self.near(exact_drops)
        else:
            near_drops, near_stats = np.zeros(0, dtype=DROP), {}
        t_near = time.time() - t0 - t_exact
        self.save_decisions(exact_drops, near_drops)
        local_docs = sum(len(s.status) for s in self.local.shards.values())
        per_rank = self.ex.comm.gather({
            "rank": self.rank,
            "docs": local_docs,
            "bytes_sent": dict(self.ex.bytes_sent),
            "peak_array_bytes": self.meter.peak_bytes,
            "peak_at": self.meter.where,
        }, root=0)
        if self.rank != 0:
            return {}
        counts = dict(self.counts)
        if self.s.near and self.s.verify:
            counts["rejected_pairs"] = counts.get("candidate_pairs", 0) - counts.get("verified_pairs", 0)
        return {
            "exact": exact_stats,
            "near": {**near_stats, **counts},
            "ranks": per_rank,
            "seconds": {"exact": round(t_exact, 3), "near": round(t_near, 3), "total": round(time.time() - t0, 3)},
        }


def _unique_edges(edges: np.ndarray) -> np.ndarray:
    """Edges with repeated (a, b) pairs removed, sorted by (a, b)."""
    if len(edges) == 0:
        return edges
    order = np.lexsort((edges["b"], edges["a"]))
    edges = edges[order]
    keep = np.ones(len(edges), dtype=bool)
    keep[1:] = (edges["a"][1:] != edges["a"][:-1]) | (edges["b"][1:] != edges["b"][:-1])
    return edges[keep]


def _merge_group_stats(per_rank: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    hist: dict[str, int] = {}
    groups = docs = 0
    largest: list[dict] = []
    for part in per_rank:
        groups += part["groups"]
        docs += part["docs"]
        for k, v in part["hist"].items():
            hist[k] = hist.get(k, 0) + v
        largest.extend(part["largest"])
    largest.sort(key=lambda g: (-g["size"], g["kept"]))
    order = sorted(hist, key=lambda k: int(k.split("-")[0]))
    return {"groups": groups, "docs_in_groups": docs, "size_hist": {k: hist[k] for k in order},
            "largest": largest[:limit]}
