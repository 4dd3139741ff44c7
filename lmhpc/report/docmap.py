"""A map of documents: TF-IDF over words and word pairs → truncated SVD → k-means, and a 2-D projection.

Plain numpy/scipy, seeded: the same documents give the same map. Texts are read up to their first
``MAX_CHARS`` characters; terms seen in fewer than ``min_df`` documents or in more than half of them are left
out, and at most ``max_terms`` terms are kept (the most frequent).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.sparse import csr_matrix
from scipy.sparse.linalg import svds

WORD = re.compile(r"[^\W\d_]{2,}|\d{2,}", re.UNICODE)
MAX_CHARS = 4000


def terms_of(text: str) -> list[str]:
    """Lower-cased words (letters, or runs of 2+ digits) and adjacent word pairs."""
    words = WORD.findall(text[:MAX_CHARS].lower())
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


@dataclass
class DocMap:
    """Where each document lies (``xy``), its cluster, and each cluster's top terms."""

    xy: np.ndarray  # (n, 2)
    labels: np.ndarray  # (n,) cluster of each document
    top_terms: list[list[str]]  # per cluster
    n_terms: int
    n_components: int


def tfidf(texts: Sequence[str], max_terms: int = 20000, min_df: int = 2) -> tuple[csr_matrix, list[str]]:
    """Rows: documents, L2-normalised sublinear TF × smoothed IDF; and the terms of the columns."""
    bags = [Counter(terms_of(t)) for t in texts]
    df: Counter[str] = Counter()
    for bag in bags:
        df.update(bag.keys())
    n = len(texts)
    eligible = [(c, t) for t, c in df.items() if c >= min_df and c <= max(min_df, n // 2)]
    vocab = [t for _, t in sorted(eligible, key=lambda ct: (-ct[0], ct[1]))[:max_terms]]
    column = {t: i for i, t in enumerate(vocab)}
    idf = np.array([math.log((1 + n) / (1 + df[t])) + 1 for t in vocab])
    rows, cols, vals = [], [], []
    for r, bag in enumerate(bags):
        for t, c in bag.items():
            j = column.get(t)
            if j is not None:
                rows.append(r)
                cols.append(j)
                vals.append((1 + math.log(c)) * idf[j])
    x = csr_matrix((np.array(vals, dtype=np.float64), (rows, cols)), shape=(n, len(vocab)))
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return csr_matrix(x.multiply(1 / norms[:, None])), vocab


def reduce(x: csr_matrix, k: int, seed: int) -> np.ndarray:
    """The documents in ``k`` SVD components (largest first), rows L2-normalised."""
    k = max(1, min(k, min(x.shape) - 1))
    v0 = np.random.default_rng(seed).random(min(x.shape))
    u, s, _ = svds(x, k=k, v0=v0)
    order = np.argsort(-s)
    z = u[:, order] * s[order]
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return z / norms


def project_2d(z: np.ndarray) -> np.ndarray:
    """The first two principal axes of the (centred) component space; signs fixed so the output is stable."""
    centred = z - z.mean(axis=0)
    if centred.shape[1] < 2:
        return np.column_stack([centred[:, 0], np.zeros(len(z))])
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    signs = np.sign(xy[np.abs(xy).argmax(axis=0), range(2)])
    signs[signs == 0] = 1
    return xy * signs


def build_map(texts: Sequence[str], clusters: int = 8, components: int = 50, seed: int = 0,
              top: int = 8) -> DocMap | None:
    """The map of ``texts``; ``None`` when there are too few documents or terms to draw one."""
    if len(texts) < 10:
        return None
    x, vocab = tfidf(texts)
    if len(vocab) < 3:
        return None
    z = reduce(x, components, seed)
    k = max(2, min(clusters, len(texts) // 10))
    _, labels = kmeans2(z, k, minit="++", seed=np.random.default_rng(seed))
    # renumber clusters by size (0: the largest) so the table reads in order
    sizes = np.bincount(labels, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(k)
    labels = rank[labels]
    top_terms = []
    for c in range(k):
        members = labels == c
        if not members.any():
            top_terms.append([])
            continue
        mean = np.asarray(x[members].mean(axis=0)).ravel()
        top_terms.append([vocab[j] for j in np.argsort(-mean, kind="stable")[:top] if mean[j] > 0])
    return DocMap(project_2d(z), labels, top_terms, len(vocab), z.shape[1])
