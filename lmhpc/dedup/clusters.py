"""Groups of duplicates: keeper choice, connected components of verified pairs, size statistics.

Which document of a group is kept is decided by one total order, the same on every rank: highest
quality first (a missing score ranks last), then the smallest document key (earliest shard, then
earliest line). Sorting keys are ``(nq, key)`` with ``nq = -quality`` (``+inf`` when missing).
"""

from __future__ import annotations

import numpy as np

# a dropped document, the document kept in its place, and the size of their group
DROP = np.dtype([("key", "<u8"), ("kept", "<u8"), ("size", "<u8")])


def negated_quality(quality: np.ndarray) -> np.ndarray:
    """Sort key for "highest quality first": -quality, with missing (NaN) scores last."""
    nq = -np.asarray(quality, dtype=np.float64)
    nq[np.isnan(nq)] = np.inf
    return nq


def group_starts(*columns: np.ndarray) -> np.ndarray:
    """Indices where a run of equal rows starts in columns that are already sorted."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for c in columns:
        change[1:] |= c[1:] != c[:-1]
    return np.flatnonzero(change)


def drops_of_sorted_groups(keys: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """For rows sorted so each group's keeper comes first: one DROP record per non-first row."""
    n = len(keys)
    sizes = np.diff(np.append(starts, n))
    group_of_row = np.repeat(np.arange(len(starts)), sizes)
    first = starts[group_of_row]
    dropped = np.arange(n) != first
    out = np.empty(int(dropped.sum()), dtype=DROP)
    out["key"] = keys[dropped]
    out["kept"] = keys[first[dropped]]
    out["size"] = sizes[group_of_row[dropped]]
    return out


def components(a: np.ndarray, b: np.ndarray, nq_a: np.ndarray, nq_b: np.ndarray) -> np.ndarray:
    """Connected components of the graph with edges ``a[i] - b[i]`` (document keys, with the sort key
    ``nq`` of each end). Returns DROP records for every node but its component's keeper."""
    from scipy.sparse import coo_matrix  # only rank 0 clusters: the other ranks skip this import
    from scipy.sparse.csgraph import connected_components

    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    n_nodes = len(nodes)
    if n_nodes == 0:
        return np.zeros(0, dtype=DROP)
    nq = np.empty(n_nodes, dtype=np.float64)
    nq[inverse] = np.concatenate([nq_a, nq_b])
    ia, ib = inverse[: len(a)], inverse[len(a) :]
    graph = coo_matrix((np.ones(len(ia), dtype=np.int8), (ia, ib)), shape=(n_nodes, n_nodes)).tocsr()
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((nodes, nq, labels))
    return drops_of_sorted_groups(nodes[order], group_starts(labels[order]))


def group_sizes(drops: np.ndarray) -> np.ndarray:
    """The size of every group that has DROP records (one entry per keeper)."""
    if len(drops) == 0:
        return np.zeros(0, dtype=np.int64)
    _, first = np.unique(drops["kept"], return_index=True)
    return drops["size"][first].astype(np.int64)


def size_histogram(sizes: np.ndarray) -> dict[str, int]:
    """Counts of groups by size: 2, 3, 4, then power-of-two bins ("5-8", "9-16", ...)."""
    hist: dict[str, int] = {}
    sizes = np.asarray(sizes, dtype=np.int64)
    for s in (2, 3, 4):
        c = int(np.count_nonzero(sizes == s))
        if c:
            hist[str(s)] = c
    lo = 5
    top = int(sizes.max()) if len(sizes) else 0
    while lo <= top:
        hi = lo * 2 - 2  # 5-8, 9-16, 17-32, ...
        c = int(np.count_nonzero((sizes >= lo) & (sizes <= hi)))
        if c:
            hist[f"{lo}-{hi}"] = c
        lo = hi + 1
    return hist


def largest_groups(drops: np.ndarray, limit: int, samples: int) -> list[dict]:
    """The ``limit`` largest groups (size desc, then keeper key) with up to ``samples`` member keys each,
    the keeper first, from their DROP records."""
    if limit == 0 or len(drops) == 0:
        return []
    order = np.lexsort((drops["key"], drops["kept"]))
    d = drops[order]
    starts = group_starts(d["kept"])
    sizes = d["size"][starts].astype(np.int64)
    pick = np.lexsort((d["kept"][starts], -sizes))[:limit]
    out = []
    for g in pick:
        lo = starts[g]
        hi = starts[g + 1] if g + 1 < len(starts) else len(d)
        members = [int(d["kept"][lo])] + [int(k) for k in d["key"][lo:hi][: max(samples - 1, 0)]]
        out.append({"size": int(sizes[g]), "kept": int(d["kept"][lo]), "members": members[:samples]})
    return out
