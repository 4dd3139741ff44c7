"""The stage's resumable intermediate state under ``<stage>/_work/``, one entry per input shard.

- ``signed/<shard>/``: per-document arrays (status, quality, exact hash, MinHash signature, band keys),
  ids and ``meta.json``; written to a temporary folder and renamed into place, so it exists only
  when complete. The signatures are read back memory-mapped: they spill to disk, not RAM.
- ``decisions/<shard>.json``: which documents of the shard are duplicates, and of which kept document.
- ``decided.json``: written once every shard's decisions are in place (cluster statistics included).
- ``written/<shard>.json``: the shard's output is complete (its stats).

Shard names are the input shard's index in the sorted curate output, so nothing here depends on
the number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmhpc.fsutil import current_umask, read_json, write_json

# document status after signing
OK = 0  # eligible for MinHash
SHORT = 1  # fewer shingle units than the n-gram size: exact dedup only
EMPTY = 2  # no text left after normalisation
BAD = 3  # not a usable document (quarantined)

KEY_SHIFT = 32
LINE_MASK = np.uint64((1 << KEY_SHIFT) - 1)


def doc_key(shard: int, line: int | np.ndarray) -> np.ndarray:
    """Global document key: shard index in the high 32 bits, position in the shard in the low 32."""
    return (np.uint64(shard) << np.uint64(KEY_SHIFT)) | np.asarray(line, dtype=np.uint64)


def key_shard(keys: np.ndarray) -> np.ndarray:
    return (np.asarray(keys, dtype=np.uint64) >> np.uint64(KEY_SHIFT)).astype(np.int64)


def key_line(keys: np.ndarray) -> np.ndarray:
    return (np.asarray(keys, dtype=np.uint64) & LINE_MASK).astype(np.int64)


@dataclass
class SignedShard:
    """What signing one shard produced: one row per document, in shard order."""

    ids: list[str]
    status: np.ndarray  # uint8, see OK/SHORT/EMPTY/BAD
    quality: np.ndarray  # float64, NaN when missing
    exact: np.ndarray  # (n, 2) uint64: 128-bit hash of the exact-normalised text
    signatures: np.ndarray  # (n, num_perm) uint32
    band_keys: np.ndarray  # (n, bands) uint64
    meta: dict[str, Any]

    ARRAYS = ("status", "quality", "exact", "signatures", "band_keys")

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.ARRAYS)


class WorkDir:
    """Paths and atomic reads/writes of the stage's intermediate state."""

    def __init__(self, stage_dir: Path) -> None:
        self.root = Path(stage_dir) / "_work"

    def signed_dir(self, shard: int) -> Path:
        return self.root / "signed" / f"{shard:05d}"

    def decisions_path(self, shard: int) -> Path:
        return self.root / "decisions" / f"{shard:05d}.json"

    def written_path(self, shard: int) -> Path:
        return self.root / "written" / f"{shard:05d}.json"

    @property
    def decided_path(self) -> Path:
        return self.root / "decided.json"

    def clean_partial(self) -> None:
        """Remove temporary folders a killed attempt left behind (call on one rank, before any writes)."""
        signed = self.root / "signed"
        if signed.is_dir():
            for tmp in signed.glob(".tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- signed shards

    def signed_meta(self, shard: int) -> dict[str, Any] | None:
        return read_json(self.signed_dir(shard) / "meta.json", default=None)

    def save_signed(self, shard: int, signed: SignedShard) -> None:
        final = self.signed_dir(shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{shard:05d}-", dir=final.parent))
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; the folder is kept under the final name
        try:
            for name in SignedShard.ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(signed, name))
            (tmp / "ids.json").write_text(json.dumps(signed.ids, ensure_ascii=False))
            write_json(tmp / "meta.json", signed.meta)
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def load_signed(self, shard: int, with_ids: bool = False) -> SignedShard:
        """Arrays memory-mapped read-only; ids only when asked for."""
        d = self.signed_dir(shard)
        arrays = {name: np.load(d / f"{name}.npy", mmap_mode="r") for name in SignedShard.ARRAYS}
        ids = json.loads((d / "ids.json").read_text()) if with_ids else []
        return SignedShard(ids=ids, meta=read_json(d / "meta.json"), **arrays)

    def load_ids(self, shard: int) -> list[str]:
        return json.loads((self.signed_dir(shard) / "ids.json").read_text())

    # ---------------------------------------------------------------- decisions and markers

    def save_decisions(self, shard: int, decisions: dict[str, list]) -> None:
        write_json(self.decisions_path(shard), decisions, fsync=True)

    def load_decisions(self, shard: int) -> dict[str, list]:
        data = read_json(self.decisions_path(shard))
        if data is None:
            raise FileNotFoundError(f"no dedup decisions for shard {shard} at {self.decisions_path(shard)}")
        return data

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
