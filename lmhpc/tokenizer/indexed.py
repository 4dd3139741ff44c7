"""Megatron indexed datasets (``<prefix>.bin`` / ``<prefix>.idx``, the ``MMIDIDX`` format): write, read, merge.

``.bin`` holds the token ids of every sequence, concatenated, little-endian, no header. ``.idx`` is::

    magic b"MMIDIDX\\x00\\x00" | uint64 version=1 | uint8 dtype code | uint64 N sequences | uint64 D doc entries
    int32 sequence_lengths[N] | int64 sequence_pointers[N] (byte offsets into .bin) | int64 document_indices[D]

Arrays start at byte 34 with no padding. We write one sequence per document, so ``document_indices`` is
``[0, 1, ..., N]``. Files are written under temporary names and renamed into place: ``.bin`` first, then
``.idx``, so a present ``.idx`` means a complete pair.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from lmhpc.fsutil import temp_file_beside

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document-index count
HEADER_SIZE = HEADER.size  # 34

DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}
UINT16_VOCAB_LIMIT = 65500  # Megatron's DType.optimal_dtype: uint16 below this vocab size, else int32


class IndexFormatError(ValueError):
    """An ``.idx`` file is not a valid Megatron index (or disagrees with its ``.bin``)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype Megatron's own tools use for ``vocab_size`` ids: uint16 below 65500, else int32."""
    return np.dtype(np.uint16 if vocab_size < UINT16_VOCAB_LIMIT else np.int32)


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def exists(prefix: str | Path) -> bool:
    """True when the pair is complete (the ``.idx`` is renamed into place last)."""
    return idx_path(prefix).exists() and bin_path(prefix).exists()


@dataclass(frozen=True)
class IndexFile:
    """The parsed content of an ``.idx`` file."""

    dtype: np.dtype
    sequence_lengths: np.ndarray  # int32[N]
    sequence_pointers: np.ndarray  # int64[N], byte offsets into .bin
    document_indices: np.ndarray  # int64[D]

    @property
    def num_sequences(self) -> int:
        return int(self.sequence_lengths.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def encode_index(dtype: np.dtype, lengths: np.ndarray, document_indices: np.ndarray | None = None) -> bytes:
    """The bytes of an ``.idx`` file for sequences of ``lengths`` tokens (one document per sequence unless
    ``document_indices`` says otherwise). Pointers are recomputed from the lengths."""
    dtype = np.dtype(dtype)
    if dtype not in CODE_OF_DTYPE:
        raise ValueError(f"dtype {dtype} has no Megatron code")
    lengths = np.asarray(lengths)
    if lengths.size and (lengths.min() < 0 or lengths.max() > np.iinfo(np.int32).max):
        raise ValueError("sequence lengths must be in [0, 2**31)")
    lengths32 = lengths.astype("<i4", copy=False)
    pointers = np.zeros(lengths.shape[0], dtype="<i8")
    if lengths.shape[0] > 1:
        np.cumsum(lengths32[:-1], dtype="<i8", out=pointers[1:])
        pointers *= dtype.itemsize
    if document_indices is None:
        document_indices = np.arange(lengths.shape[0] + 1, dtype="<i8")
    doc = np.asarray(document_indices, dtype="<i8")
    header = HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], lengths.shape[0], doc.shape[0])
    return header + lengths32.tobytes() + pointers.tobytes() + doc.tobytes()


def read_index(path: str | Path) -> IndexFile:
    """Parse an ``.idx`` file, checking magic, version, dtype code and size."""
    data = Path(path).read_bytes()
    if len(data) < HEADER_SIZE:
        raise IndexFormatError(f"{path}: {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, code, n, d = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise IndexFormatError(f"{path}: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise IndexFormatError(f"{path}: version {version}, expected {VERSION}")
    if code not in DTYPE_CODES:
        raise IndexFormatError(f"{path}: unknown dtype code {code}")
    expected = HEADER_SIZE + 12 * n + 8 * d
    if len(data) not in (expected, expected + n):  # + n: multimodal sequence modes
        raise IndexFormatError(f"{path}: {len(data)} bytes, expected {expected} for N={n}, D={d}")
    lengths = np.frombuffer(data, dtype="<i4", count=n, offset=HEADER_SIZE)
    pointers = np.frombuffer(data, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
    docs = np.frombuffer(data, dtype="<i8", count=d, offset=HEADER_SIZE + 12 * n)
    return IndexFile(np.dtype(DTYPE_CODES[code]), lengths, pointers, docs)


class IndexedDatasetWriter:
    """Writes one ``<prefix>.bin/.idx`` pair, one sequence per document, atomically on :meth:`close`."""

    def __init__(self, prefix: str | Path, dtype: np.dtype | type) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        if np.dtype(dtype) not in CODE_OF_DTYPE:
            raise ValueError(f"dtype {dtype} has no Megatron code")
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp_bin = temp_file_beside(bin_path(self.prefix))
        self._bin: BinaryIO | None = os.fdopen(fd, "wb", buffering=1 << 20)
        self._lengths: list[np.ndarray] = []
        self.num_sequences = 0
        self.num_tokens = 0
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None

    def add_sequences(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append ``len(lengths)`` sequences whose tokens are ``tokens``, concatenated."""
        if self._bin is None:
            raise ValueError(f"writer for {self.prefix} is closed")
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != tokens.shape[0]:
            raise ValueError(f"lengths add up to {int(lengths.sum())} but {tokens.shape[0]} tokens were given")
        if tokens.size and self._limit is not None and (tokens.max() > self._limit or tokens.min() < 0):
            raise ValueError(f"token ids outside [0, {self._limit}] cannot be stored as {self.dtype}")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._lengths.append(lengths)
        self.num_sequences += int(lengths.shape[0])
        self.num_tokens += int(tokens.shape[0])

    def add_document(self, tokens: Sequence[int] | np.ndarray) -> None:
        """Append one document as one sequence."""
        arr = np.asarray(tokens, dtype=np.int64)
        self.add_sequences(arr, np.array([arr.shape[0]]))

    def close(self) -> Path:
        """Rename ``.bin`` into place, then write ``.idx``; returns the prefix."""
        if self._bin is None:
            return self.prefix
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._bin = None
        os.replace(self._tmp_bin, bin_path(self.prefix))
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, dtype=np.int64)
        _write_atomic(idx_path(self.prefix), encode_index(self.dtype, lengths))
        return self.prefix

    def abort(self) -> None:
        """Discard what was written (nothing is renamed into place)."""
        if self._bin is not None:
            self._bin.close()
            self._bin = None
        self._tmp_bin.unlink(missing_ok=True)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class IndexedDatasetReader:
    """Random access to the sequences of a ``<prefix>.bin/.idx`` pair (memory-mapped)."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        self.index = read_index(idx_path(prefix))
        size = bin_path(prefix).stat().st_size
        expected = self.index.num_tokens * self.index.dtype.itemsize
        if size != expected:
            raise IndexFormatError(f"{bin_path(prefix)}: {size} bytes, but the index describes {expected}")
        self._bin = np.memmap(bin_path(prefix), dtype=self.index.dtype, mode="r") if size else np.zeros(
            0, dtype=self.index.dtype
        )

    def __len__(self) -> int:
        return self.index.num_sequences

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.index.sequence_pointers[i]) // self.index.dtype.itemsize
        return np.asarray(self._bin[start : start + int(self.index.sequence_lengths[i])])


def merge(prefixes: Sequence[str | Path], out_prefix: str | Path) -> IndexFile:
    """Concatenate indexed datasets, in order, into ``out_prefix`` (Megatron's ``add_index`` rules: the ``.bin``
    bytes are copied as they are, lengths appended, document indices shifted, pointers recomputed)."""
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    indexes = [read_index(idx_path(p)) for p in prefixes]
    dtypes = {ix.dtype for ix in indexes}
    if len(dtypes) > 1:
        raise IndexFormatError(f"cannot merge datasets of different dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop() if dtypes else np.dtype(np.int32)
    lengths = [ix.sequence_lengths for ix in indexes]
    docs = [np.zeros(1, dtype=np.int64)]
    offset = 0
    for ix in indexes:
        docs.append(ix.document_indices[1:] + offset)
        offset += ix.num_sequences
    fd, tmp = temp_file_beside(bin_path(out_prefix))
    try:
        with os.fdopen(fd, "wb") as out:
            expected_size = 0
            for p, ix in zip(prefixes, indexes):
                with open(bin_path(p), "rb") as fh:
                    shutil.copyfileobj(fh, out, 16 << 20)
                expected_size += ix.num_tokens * dtype.itemsize
                if out.tell() != expected_size:
                    raise IndexFormatError(f"{bin_path(p)} does not match its index")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, bin_path(out_prefix))
    finally:
        Path(tmp).unlink(missing_ok=True)
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)
    _write_atomic(idx_path(out_prefix), encode_index(dtype, all_lengths, np.concatenate(docs)))
    return read_index(idx_path(out_prefix))


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
