"""Exact and MinHash near-duplicate removal over the curated shards, as one MPI job.

stage (orchestration, three resumable phases) · sign (per-shard hashes and signatures) ·
decide (the all-rank exchanges) · write (kept documents, drop lists) · normalize, shingles,
signatures (datasketch), clusters, exchange (mpi4py), workdir, settings, sizing · planted
(near-duplicates with ground truth, and scoring).
"""
