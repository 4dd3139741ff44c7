"""Compressed JSON-lines I/O: size-capped, deterministic, atomically renamed document shards.

Compression is chosen by file suffix when reading (``.zst``, ``.gz``, anything else is plain) and by the
``compression`` argument when writing. Output is byte-identical for identical input: zstd level 3, single
threaded, no content size, with a checksum; gzip with ``mtime=0`` and no file name in the header.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import zstandard

from lmhpc.data.documents import Document
from lmhpc.fsutil import temp_file_beside

SUFFIXES = {"zst": ".jsonl.zst", "gz": ".jsonl.gz", "none": ".jsonl"}
ZSTD_LEVEL = 3
GZIP_LEVEL = 6
_ZSTD_INPUT_PIECE = 8192  # compressed bytes fed per step: bounds the output one step can produce
_ZSTD_MAX_WINDOW = 2**31


class ZstdRawReader(io.RawIOBase):
    """Streaming zstd decompression that, unlike ``zstandard``'s stream reader, notices truncation.

    Reads across concatenated frames. Raises ``EOFError`` when the input ends inside a frame and
    ``zstandard.ZstdError`` on corrupt data; all output decoded before the damage is returned first.
    """

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self._fh = fh
        self._dctx = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._obj: zstandard.ZstdDecompressionObj | None = None
        self._input = b""
        self._out = b""
        self._pos = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Copy already decoded bytes into ``buffer``, decoding more only when none are left."""
        while self._pos >= len(self._out) and not self._eof:
            self._fill()
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def _fill(self) -> None:
        piece = self._input or self._fh.read(_ZSTD_INPUT_PIECE)
        self._input = b""
        if not piece:
            if self._obj is not None:
                raise EOFError("zstd stream ended inside a frame")
            self._eof = True
            return
        if self._obj is None:
            self._obj = self._dctx.decompressobj()
        self._out = self._obj.decompress(piece)
        self._pos = 0
        if self._obj.eof:
            self._input = self._obj.unused_data
            self._obj = None

    def close(self) -> None:
        """Close the reader and the underlying file."""
        if not self.closed:
            self._fh.close()
        super().close()


def open_compressed_reader(path: str | Path) -> io.BufferedReader | gzip.GzipFile:
    """Open ``path`` for binary reading, decompressing ``.gz`` and ``.zst`` files on the fly.

    Use ``read1`` for chunked reads: it never discards data that was decoded before a decompression error.
    """
    path = Path(path)
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    fh = open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(ZstdRawReader(fh), buffer_size=1 << 20)
    return fh


def compressed_writer(fh: BinaryIO, compression: str) -> BinaryIO:
    """Wrap the open binary file ``fh`` in a deterministic compressor; closing the wrapper leaves ``fh`` open."""
    if compression == "zst":
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True, write_content_size=False)
        return cctx.stream_writer(fh, closefd=False)  # type: ignore[return-value]
    if compression == "gz":
        return gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=GZIP_LEVEL)  # type: ignore[return-value]
    if compression == "none":
        return _Uncloseable(fh)  # type: ignore[return-value]
    raise ValueError(f"unknown compression {compression!r}; expected one of {sorted(SUFFIXES)}")


def compression_for(path: str | Path) -> str:
    """The compression a file name implies: ``"zst"``, ``"gz"`` or ``"none"``."""
    name = Path(path).name
    return "zst" if name.endswith(".zst") else "gz" if name.endswith(".gz") else "none"


class _Uncloseable(io.RawIOBase):
    """Pass-through writer whose ``close`` does not close the wrapped file."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self._fh = fh

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._fh.write(data)


def encode_line(doc: Document) -> bytes:
    """One document as a compact JSON line (UTF-8, trailing newline)."""
    return (json.dumps(doc.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class ShardWriter:
    """Writes documents as JSON lines into size-capped shards: <dir>/<prefix>-<00000>.jsonl.zst, each written
    to a temporary name and renamed into place when closed.

    ``max_bytes`` caps the *uncompressed* bytes of a shard; a new shard starts when the next line would exceed
    it, so a single line larger than the cap gets a shard of its own. Nothing written means no file at all:
    ``close()`` then returns ``[]``. Leaving a ``with`` block by an exception discards the shard still open
    (its temporary file is removed); shards already finished stay in place.
    """

    def __init__(self, directory: Path, prefix: str, max_bytes: int = 64 * 2**20, compression: str = "zst") -> None:
        if compression not in SUFFIXES:
            raise ValueError(f"unknown compression {compression!r}; expected one of {sorted(SUFFIXES)}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.directory = Path(directory)
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.compression = compression
        self.docs_written = 0
        self.bytes_written = 0
        self._paths: list[Path] = []
        self._raw: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._tmp: Path | None = None
        self._shard_bytes = 0
        self._closed = False

    def write(self, doc: Document) -> None:
        """Append one document, starting a new shard first when the current one would exceed ``max_bytes``."""
        if self._closed:
            raise ValueError("write to a closed ShardWriter")
        line = encode_line(doc)
        if self._stream is not None and self._shard_bytes and self._shard_bytes + len(line) > self.max_bytes:
            self._finish_shard()
        if self._stream is None:
            self._open_shard()
        assert self._stream is not None
        self._stream.write(line)
        self._shard_bytes += len(line)
        self.bytes_written += len(line)
        self.docs_written += 1

    def _shard_path(self, index: int) -> Path:
        return self.directory / f"{self.prefix}-{index:05d}{SUFFIXES[self.compression]}"

    def _open_shard(self) -> None:
        fd, self._tmp = temp_file_beside(self._shard_path(len(self._paths)))
        self._raw = os.fdopen(fd, "wb")
        self._stream = compressed_writer(self._raw, self.compression)
        self._shard_bytes = 0

    def _finish_shard(self) -> None:
        assert self._stream is not None and self._raw is not None and self._tmp is not None
        self._stream.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        final = self._shard_path(len(self._paths))
        os.replace(self._tmp, final)
        self._paths.append(final)
        self._stream = self._raw = self._tmp = None

    @property
    def paths(self) -> list[Path]:
        """Shards finished so far, in order."""
        return list(self._paths)

    def close(self) -> list[Path]:
        """Finish the open shard and return all finalised shard paths, in order. Safe to call again."""
        if not self._closed:
            if self._stream is not None:
                self._finish_shard()
            self._closed = True
        return list(self._paths)

    def abort(self) -> None:
        """Drop the shard still being written (its temporary file is removed); finished shards are kept."""
        if self._raw is not None:
            self._raw.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._stream = self._raw = self._tmp = None
        self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_jsonl_docs(path: Path) -> Iterator[Document]:
    """Read back documents from one of our own shards (plain, ``.gz`` or ``.zst``).

    These files are trusted: a malformed line raises ``ValueError`` naming the file and line. Blank lines are
    skipped.
    """
    with open_compressed_reader(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                yield Document(
                    id=d["id"],
                    text=d["text"],
                    source=d.get("source", ""),
                    url=d.get("url"),
                    metadata=d.get("metadata") or {},
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: not a document line ({type(exc).__name__}: {exc})") from exc
