"""MinHash signatures through datasketch, band keys, and the LSH shape."""

from __future__ import annotations

import numpy as np
from datasketch import MinHash

from lmhpc.dedup.shingles import shingle_hashes
from lmhpc.dedup.signatures import EMPTY_VALUE, MinHashSigner, candidate_probability, estimated_jaccard, lsh_params


def test_bulk_signatures_equal_datasketch_one_value_at_a_time():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 2**32, size=500, dtype=np.uint64).astype(np.uint32)
    offsets = np.array([0, 120, 120, 500])
    sig = MinHashSigner(num_perm=64, seed=7, bands=8, rows=8).sign(values, offsets)
    for d in (0, 2):
        m = MinHash(num_perm=64, seed=7, hashfunc=int)
        for v in values[offsets[d] : offsets[d + 1]].tolist():
            m.update(v)
        assert np.array_equal(sig[d], m.hashvalues)
    assert (sig[1] == EMPTY_VALUE).all()  # no shingle, no signature


def test_huge_documents_are_signed_in_pieces_with_the_same_result():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 2**32, size=10_000, dtype=np.uint64).astype(np.uint32)
    offsets = np.array([0, 10_000])
    whole = MinHashSigner(128, 3, 14, 9).sign(values, offsets)
    pieces = MinHashSigner(128, 3, 14, 9, max_shingles_per_update=777).sign(values, offsets)
    assert np.array_equal(whole, pieces)


def test_same_seed_same_signature_other_seed_differs():
    values, offsets = shingle_hashes(["a quick brown fox jumps over the lazy dog again"], "word", 3)
    a = MinHashSigner(32, 1, 4, 8).sign(values, offsets)
    b = MinHashSigner(32, 1, 4, 8).sign(values, offsets)
    c = MinHashSigner(32, 2, 4, 8).sign(values, offsets)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_band_keys_equal_exactly_when_bands_equal():
    signer = MinHashSigner(num_perm=12, seed=1, bands=3, rows=4)
    sig = np.arange(24, dtype=np.uint32).reshape(2, 12)
    sig[1, :4] = sig[0, :4]  # band 0 equal, bands 1 and 2 differ
    keys = signer.band_keys(sig)
    assert keys.shape == (2, 3)
    assert keys[0, 0] == keys[1, 0]
    assert keys[0, 1] != keys[1, 1] and keys[0, 2] != keys[1, 2]
    same_values = np.tile(np.arange(4, dtype=np.uint32), 3).reshape(1, 12)
    k = signer.band_keys(same_values)
    assert len(set(k[0].tolist())) == 3  # identical values in different bands are different buckets


def test_estimated_jaccard_tracks_exact_jaccard():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2**32, size=2000, dtype=np.uint64)
    signer = MinHashSigner(256, 5, 16, 16)
    for keep in (0.9, 0.7, 0.4):
        cut = int(len(base) * keep)
        other = np.concatenate([base[:cut], rng.integers(0, 2**32, size=len(base) - cut, dtype=np.uint64)])
        exact = cut / (2 * len(base) - cut)
        values = np.concatenate([base, other]).astype(np.uint32)
        sig = signer.sign(values, np.array([0, len(base), 2 * len(base)]))
        assert abs(estimated_jaccard(sig[:1], sig[1:])[0] - exact) < 0.08


def test_lsh_shape_from_datasketch():
    assert lsh_params(0.7, 128, 0.5, 0.5) == (14, 9)
    assert lsh_params(0.8, 128, 0.5, 0.5) == (9, 13)
    assert candidate_probability(0.85, 14, 9) > 0.97
    assert candidate_probability(0.5, 14, 9) < 0.03
