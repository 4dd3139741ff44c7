"""Phase 1: read one curated shard and compute, per document, everything dedup needs.

Per document: its status (eligible for MinHash, too short, empty, unusable), quality score, the
128-bit hash of its exact-normalised text, its MinHash signature and LSH band keys. Documents are
processed in batches so the shingle hashing and signatures are vectorised.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lmhpc.data.documents import Document
from lmhpc.data.writers import iter_jsonl_docs
from lmhpc.dedup.normalize import normalize_text
from lmhpc.dedup.settings import DedupSettings
from lmhpc.dedup.shingles import shingle_hashes
from lmhpc.dedup.signatures import EMPTY_VALUE
from lmhpc.dedup.workdir import BAD, EMPTY, OK, SHORT, SignedShard

BATCH_CHARS = 32 * 2**20  # a batch is also cut when its texts reach this many characters


class DamagedShard(RuntimeError):
    """A curated shard cannot be read (truncated or corrupt): the curate output must be redone."""


def quality_of(doc: Document, key: str | None) -> float:
    """The document's quality score (higher is kept first); NaN when absent or not a number."""
    if key is None:
        return math.nan
    value = doc.metadata.get(key) if isinstance(doc.metadata, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value)


def exact_hash(text: str) -> tuple[int, int]:
    """128-bit BLAKE2b of the text as two unsigned 64-bit integers."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def bad_reason(doc: Document) -> str | None:
    """Why a record cannot be deduplicated (nor written back), or None when it can."""
    if not isinstance(doc.text, str):
        return "text_not_string"
    if not isinstance(doc.id, str):
        return "id_not_string"
    if not doc.text.isascii():
        try:
            doc.text.encode("utf-8")
        except UnicodeEncodeError:
            return "text_not_utf8"  # lone surrogates from a \ud800-style escape
    return None


def iter_shard(path: Path) -> Iterator[Document]:
    """The documents of a curated shard; a damaged shard raises :class:`DamagedShard` naming it."""
    try:
        yield from iter_jsonl_docs(path)
    except (ValueError, EOFError, OSError) as e:
        raise DamagedShard(f"cannot read curated shard {path}: {e}; redo the curate stage for it") from e


class _Batch:
    """Documents waiting to be shingled and signed together."""

    def __init__(self, settings: DedupSettings) -> None:
        self.settings = settings
        self.signer = settings.signer()
        self.rows: list[int] = []
        self.texts: list[str] = []
        self.chars = 0
        self.signed_rows: list[np.ndarray] = []
        self.signatures: list[np.ndarray] = []
        self.band_keys: list[np.ndarray] = []
        self.short_rows: list[int] = []
        self.shingles = 0

    def add(self, row: int, text: str) -> None:
        self.rows.append(row)
        self.texts.append(text)
        self.chars += len(text)

    def flush(self) -> None:
        if not self.rows:
            return
        s = self.settings
        values, offsets = shingle_hashes(self.texts, s.shingle, s.ngram, single_spaced=s.near_norm.collapse_whitespace)
        sizes = np.diff(offsets)
        rows = np.asarray(self.rows, dtype=np.int64)
        has = sizes > 0
        self.short_rows.extend(rows[~has].tolist())
        if has.any():
            sig = self.signer.sign(values, offsets)[has]
            self.signed_rows.append(rows[has])
            self.signatures.append(sig)
            self.band_keys.append(self.signer.band_keys(sig))
        self.shingles += int(sizes.sum())
        self.rows, self.texts, self.chars = [], [], 0


def sign_shard(path: Path, settings: DedupSettings, batch_docs: int = 256) -> SignedShard:
    """Sign every document of the curated shard at ``path``, streaming it in batches."""
    t0 = time.process_time()
    ids: list[str] = []
    status: list[int] = []
    quality: list[float] = []
    exact: list[tuple[int, int]] = []
    batch = _Batch(settings)
    text_bytes = 0
    for row, doc in enumerate(iter_shard(path)):
        ids.append(doc.id if isinstance(doc.id, str) else str(doc.id))
        if bad_reason(doc) is not None:
            status.append(BAD)
            quality.append(math.nan)
            exact.append((0, 0))
            continue
        text_bytes += len(doc.text.encode("utf-8", "surrogatepass"))
        quality.append(quality_of(doc, settings.quality_key))
        exact.append(exact_hash(normalize_text(doc.text, settings.exact_norm)) if settings.exact else (0, 0))
        if not doc.text.strip():
            status.append(EMPTY)
            continue
        status.append(OK)
        if settings.near:
            batch.add(row, normalize_text(doc.text, settings.near_norm))
            if len(batch.rows) >= batch_docs or batch.chars >= BATCH_CHARS:
                batch.flush()
        else:
            status[row] = SHORT  # exact dedup only
    batch.flush()
    n = len(ids)
    status_arr = np.asarray(status, dtype=np.uint8)
    status_arr[np.asarray(batch.short_rows, dtype=np.int64)] = SHORT
    signatures = np.full((n, settings.num_perm), EMPTY_VALUE, dtype=np.uint32)
    band_keys = np.zeros((n, settings.bands), dtype=np.uint64)
    for rows, sig, keys in zip(batch.signed_rows, batch.signatures, batch.band_keys):
        signatures[rows] = sig
        band_keys[rows] = keys
    meta: dict[str, Any] = {
        "source": path.name,
        "docs": n,
        "text_bytes": text_bytes,
        "shingles": batch.shingles,
        "signed": int(np.count_nonzero(status_arr == OK)),
        "cpu_s": round(time.process_time() - t0, 4),
    }
    return SignedShard(
        ids=ids,
        status=status_arr,
        quality=np.asarray(quality, dtype=np.float64),
        exact=np.asarray(exact, dtype=np.uint64).reshape(n, 2),
        signatures=signatures,
        band_keys=band_keys,
        meta=meta,
    )
