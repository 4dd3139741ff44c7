"""Shingles of normalised text, hashed to 32 bits, for a whole batch of documents at once.

Word shingles are n consecutive words (split on whitespace); character shingles are n consecutive
code points. Hashing is vectorised over the batch with numpy, with no Python loop per word:

- a word's hash is simple tabulation hashing of its UTF-8 bytes (XOR of one random 64-bit table
  entry per (position in word, byte value)), mixed with its length;
- a character's hash is the MurmurHash3 64-bit finaliser of its code point;
- a shingle's hash is ``fmix64(sum_k unit_hash[i + k] * K_k)`` with fixed odd multipliers ``K_k``
  (order matters), of which the upper 32 bits are kept.

Everything is seeded by constants, so every rank and every run hashes the same text the same way.
"""

from __future__ import annotations

import numpy as np

_TABLE_POSITIONS = 64  # bytes past the 64th of a word reuse the table rows (words that long are rare)
_rng = np.random.Generator(np.random.PCG64(0x5EED_D0C5))
_BYTE_TABLE = _rng.integers(0, 2**64, size=(_TABLE_POSITIONS, 256), dtype=np.uint64, endpoint=False)
_LENGTH_TABLE = _rng.integers(0, 2**64, size=256, dtype=np.uint64, endpoint=False)
MULTIPLIERS = _rng.integers(0, 2**63, size=257, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_CHAR_SALT = np.uint64(0x9E3779B97F4A7C15)

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)


def fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser: an avalanching bijection on uint64, element-wise."""
    h = h ^ (h >> _S33)
    h = h * _M1
    h = h ^ (h >> _S33)
    h = h * _M2
    return h ^ (h >> _S33)


def word_hashes(texts: list[str], single_spaced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hash every whitespace-separated word of every text.

    ``single_spaced``: the texts are known to hold words separated by single spaces, without leading or
    trailing whitespace (as whitespace-collapsing normalisation leaves them), so they need no re-split.
    Returns ``(hashes, counts)``: uint64 hashes of all words, text after text, and the number of words
    of each text.
    """
    if not single_spaced:
        texts = [" ".join(t.split()) for t in texts]
    counts = np.fromiter((t.count(" ") + 1 if t else 0 for t in texts), dtype=np.int64, count=len(texts))
    if not counts.sum():
        return np.zeros(0, dtype=np.uint64), counts
    data = np.frombuffer(" ".join(t for t in texts if t).encode("utf-8"), dtype=np.uint8)
    is_space = data == 32
    space_pos = np.flatnonzero(is_space)
    starts = np.empty(len(space_pos) + 1, dtype=np.int64)
    starts[0], starts[1:] = 0, space_pos + 1
    ends = np.empty_like(starts)
    ends[:-1], ends[-1] = space_pos, len(data)
    lengths = ends - starts
    keep = ~is_space
    # position of each (non-space) byte inside its word
    position = np.arange(int(keep.sum()), dtype=np.int64) - np.repeat(starts - np.arange(len(starts)), lengths)
    values = _BYTE_TABLE[position % _TABLE_POSITIONS, data[keep]]
    packed_starts = starts - np.arange(len(starts))  # where each word starts once the spaces are gone
    hashes = np.bitwise_xor.reduceat(values, packed_starts)
    hashes ^= _LENGTH_TABLE[np.minimum(lengths, 255)]
    return fmix64(hashes), counts


def char_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash every code point of every text. Returns ``(hashes, counts)`` like :func:`word_hashes`."""
    counts = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    if not counts.sum():
        return np.zeros(0, dtype=np.uint64), counts
    code_points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype="<u4").astype(np.uint64)
    return fmix64(code_points ^ _CHAR_SALT), counts


def shingle_hashes(texts: list[str], unit: str, n: int, single_spaced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the n-gram shingles of each text, in CSR form (``single_spaced``: see
    :func:`word_hashes`).

    Returns ``(values, offsets)``: the shingles of text ``d`` are ``values[offsets[d]:offsets[d + 1]]``
    (uint32). A text with fewer than ``n`` units has no shingle.
    """
    if unit == "word":
        units, counts = word_hashes(texts, single_spaced)
    elif unit == "char":
        units, counts = char_hashes(texts)
    else:
        raise ValueError(f"unknown shingle unit {unit!r}; expected 'word' or 'char'")
    windows = np.maximum(counts - n + 1, 0)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(windows, out=offsets[1:])
    total = int(offsets[-1])
    if total == 0:
        return np.zeros(0, dtype=np.uint32), offsets
    # start index (into units) of each window: the text's first unit + the window's rank in the text
    unit_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    first = np.repeat(unit_starts, windows) + (np.arange(total) - np.repeat(offsets[:-1], windows))
    acc = np.zeros(total, dtype=np.uint64)
    for k in range(n):
        acc += units[first + k] * MULTIPLIERS[k % len(MULTIPLIERS)]
    return (fmix64(acc) >> np.uint64(32)).astype(np.uint32), offsets
