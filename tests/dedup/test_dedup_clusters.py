"""Keeper choice and clustering."""

from __future__ import annotations

import numpy as np

from lmhpc.dedup.clusters import components, group_sizes, largest_groups, negated_quality, size_histogram

U = np.uint64


def test_components_keep_highest_quality_then_smallest_key():
    # 1-2-3 chained, 10-11 apart; 3 has the best quality, 10 and 11 tie
    a = np.array([1, 2, 10], dtype=U)
    b = np.array([2, 3, 11], dtype=U)
    q = {1: 0.5, 2: 0.1, 3: 0.9, 10: np.nan, 11: np.nan}
    nqa = negated_quality(np.array([q[int(x)] for x in a]))
    nqb = negated_quality(np.array([q[int(x)] for x in b]))
    drops = components(a, b, nqa, nqb)
    got = {int(k): (int(kept), int(s)) for k, kept, s in drops}
    assert got == {1: (3, 3), 2: (3, 3), 11: (10, 2)}
    assert sorted(group_sizes(drops).tolist()) == [2, 3]


def test_components_do_not_depend_on_edge_order():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 50, 80).astype(U)
    b = rng.integers(0, 50, 80).astype(U)
    nq = np.zeros(80)
    first = components(a, b, nq, nq)
    perm = rng.permutation(80)
    second = components(b[perm], a[perm], nq, nq)
    assert sorted(first.tolist()) == sorted(second.tolist())


def test_missing_quality_ranks_last():
    assert list(negated_quality(np.array([np.nan, 0.2, -1.0]))) == [np.inf, -0.2, 1.0]


def test_size_histogram_bins():
    assert size_histogram(np.array([2, 2, 3, 5, 8, 9, 40])) == {"2": 2, "3": 1, "5-8": 2, "9-16": 1, "33-64": 1}
    assert size_histogram(np.array([], dtype=np.int64)) == {}


def test_largest_groups_lists_keeper_first():
    drops = np.array([(5, 1, 3), (7, 1, 3), (9, 2, 2)], dtype=[("key", "<u8"), ("kept", "<u8"), ("size", "<u8")])
    assert largest_groups(drops, limit=1, samples=5) == [{"size": 3, "kept": 1, "members": [1, 5, 7]}]
    assert largest_groups(drops, limit=5, samples=2)[1] == {"size": 2, "kept": 2, "members": [2, 9]}
