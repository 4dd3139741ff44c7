"""MinHash signatures with datasketch, LSH band keys, and estimated Jaccard similarity.

Signatures come from datasketch's bulk API (``MinHash.bulk``: one permutation template, then
``update_batch`` per document) with its default ``affine32`` scheme; the shingles arrive already
hashed to 32 bits (:mod:`lmhpc.dedup.shingles`), so datasketch's hash function is the identity.
One seed gives the same permutations on every rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from lmhpc.dedup.shingles import MULTIPLIERS, fmix64

EMPTY_VALUE = np.uint32(0xFFFFFFFF)  # datasketch's value of a permutation that saw no shingle
_BAND_SALT = np.uint64(0xD6E8FEB86659FD93)


@functools.cache
def lsh_params(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH picks for this threshold, size and weights."""
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(fp_weight, fn_weight))
    return int(lsh.b), int(lsh.r)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two documents of this Jaccard similarity share at least one band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


@dataclass(frozen=True)
class MinHashSigner:
    """Signs documents from their shingle hashes and cuts signatures into LSH band keys."""

    num_perm: int
    seed: int
    bands: int
    rows: int
    max_shingles_per_update: int = 65536

    def sign(self, values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures (``len(offsets) - 1`` x ``num_perm``, uint32) of the documents whose shingle
        hashes are ``values[offsets[d]:offsets[d + 1]]``. A document with no shingle gets the
        all-``EMPTY_VALUE`` row."""
        n_docs = len(offsets) - 1
        out = np.full((n_docs, self.num_perm), EMPTY_VALUE, dtype=np.uint32)
        sizes = np.diff(offsets)
        as_ints = values.tolist()
        regular = [d for d in range(n_docs) if 0 < sizes[d] <= self.max_shingles_per_update]
        if regular:
            batches = [as_ints[offsets[d] : offsets[d + 1]] for d in regular]
            # shingles are already 32-bit hashes: int() hands them to the permutations unchanged
            for d, mh in zip(regular, MinHash.bulk(batches, num_perm=self.num_perm, seed=self.seed, hashfunc=int)):
                out[d] = mh.hashvalues
        for d in np.flatnonzero(sizes > self.max_shingles_per_update):
            mh = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=int)
            for lo in range(int(offsets[d]), int(offsets[d + 1]), self.max_shingles_per_update):
                mh.update_batch(as_ints[lo : min(lo + self.max_shingles_per_update, int(offsets[d + 1]))])
            out[d] = mh.hashvalues
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One 64-bit key per (document, band): a hash of the band's ``rows`` values and its index, so
        equal keys mean equal bands (up to 64-bit collisions) and keys of different bands differ."""
        n = signatures.shape[0]
        used = signatures[:, : self.bands * self.rows].reshape(n, self.bands, self.rows).astype(np.uint64)
        acc = (used * MULTIPLIERS[: self.rows]).sum(axis=2, dtype=np.uint64)
        acc += (np.arange(self.bands, dtype=np.uint64) + np.uint64(1)) * _BAND_SALT
        return fmix64(acc)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise share of equal MinHash values between two signature matrices (the Jaccard estimate)."""
    return np.count_nonzero(a == b, axis=1) / a.shape[1]
