"""Memory, disk and network figures of a dedup run, per document, and their extrapolation to 1 TB."""

from __future__ import annotations

from typing import Any

TERABYTE = 10**12


def memory_figures(docs: int, text_bytes: int, work_bytes: int, per_rank: list[dict[str, Any]],
                   rss_bytes: list[int]) -> dict[str, Any]:
    """Measured figures of one run: bytes per document held in RAM on a rank at the peak of the
    exchange phase, bytes moved between ranks, bytes spilled to disk, peak RSS per rank."""
    shuffle: dict[str, int] = {}
    for r in per_rank:
        for phase, n in r["bytes_sent"].items():
            shuffle[phase] = shuffle.get(phase, 0) + int(n)
    total_shuffle = sum(shuffle.values())
    per_doc_rank = [r["peak_array_bytes"] / r["docs"] for r in per_rank if r["docs"]]
    return {
        "docs": docs,
        "text_bytes": text_bytes,
        "avg_doc_bytes": round(text_bytes / docs, 1) if docs else 0,
        "work_bytes_on_disk": work_bytes,
        "work_bytes_per_doc": round(work_bytes / docs, 1) if docs else 0,
        "exchange_peak_bytes_per_doc_per_rank": round(max(per_doc_rank), 1) if per_doc_rank else 0,
        "exchange_peak_bytes_by_rank": [r["peak_array_bytes"] for r in per_rank],
        "exchange_peak_at": [r["peak_at"] for r in per_rank],
        "shuffle_bytes": {**shuffle, "total": total_shuffle},
        "shuffle_bytes_per_doc": round(total_shuffle / docs, 1) if docs else 0,
        "peak_rss_mb_by_rank": [round(b / 2**20, 1) for b in rss_bytes],
    }


def estimate(figures: dict[str, Any], ranks: int, measured_ranks: int, off_rank_bytes_per_doc: float,
             text_bytes: int = TERABYTE, cluster_bytes_per_doc: float = 0.0) -> dict[str, Any]:
    """Extrapolate measured per-document figures to ``text_bytes`` of text on ``ranks`` ranks.

    Linear in documents. RAM per rank = the measured baseline (peak RSS less the exchange arrays) + the
    peak exchange bytes per document x documents per rank; the signatures stay on disk, memory-mapped.
    Rank 0 also holds the gathered edges while it clusters. The shuffle sends a share (N-1)/N of the
    records off-rank: ``off_rank_bytes_per_doc`` is what one document puts on the wire when every
    record leaves its rank.
    """
    if not figures.get("avg_doc_bytes"):
        return {}
    docs = text_bytes / figures["avg_doc_bytes"]
    per_rank_docs = docs / ranks
    baseline = max(0.0, max(figures["peak_rss_mb_by_rank"]) * 2**20 - max(figures["exchange_peak_bytes_by_rank"]))
    ram = baseline + figures["exchange_peak_bytes_per_doc_per_rank"] * per_rank_docs
    return {
        "text_tb": round(text_bytes / TERABYTE, 3),
        "ranks": ranks,
        "docs": int(docs),
        "ram_per_rank_gb": round(ram / 1e9, 2),
        "rank0_cluster_ram_gb": round(cluster_bytes_per_doc * docs / 1e9, 2),
        "work_disk_tb": round(figures["work_bytes_per_doc"] * docs / 1e12, 3),
        "shuffle_tb": round(off_rank_bytes_per_doc * (ranks - 1) / ranks * docs / 1e12, 3),
        "from_measured_ranks": measured_ranks,
    }
