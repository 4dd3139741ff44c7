"""Quarantine: bad input records kept aside, one JSON line each, with their reason and location."""

from __future__ import annotations

import base64
import collections
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from lmhpc.data.writers import compressed_writer, compression_for, open_compressed_reader
from lmhpc.fsutil import temp_file_beside

OVERSIZED_PREFIX_BYTES = 4096


class Quarantine:
    """Bad records kept aside with their reason and location; nothing is silently dropped.

    Each ``add`` appends one JSON line ``{"reason", "location", "detail", "raw", "raw_bytes", "raw_truncated"}``
    where ``raw`` holds at most ``keep_raw_bytes`` of the record: as UTF-8 text, or base64 with
    ``"raw_encoding": "base64"`` when those bytes are not valid UTF-8. The file is only created once something
    is added; it is written under a temporary name and renamed into place by ``close()`` (also on leaving a
    ``with`` block, even by an exception, so the evidence is kept). ``.zst``/``.gz`` paths are compressed.

    Readers keep only ``oversized_prefix_bytes`` of a record that is too large, never the whole of it.
    ``on_add(reason)`` is called after every entry is written (a stage may raise from it to stop early).
    """

    def __init__(
        self,
        path: Path,
        keep_raw_bytes: int = 64 * 2**20,
        oversized_prefix_bytes: int = OVERSIZED_PREFIX_BYTES,
        on_add: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.keep_raw_bytes = keep_raw_bytes
        self.oversized_prefix_bytes = oversized_prefix_bytes
        self.on_add = on_add
        self.counts: collections.Counter[str] = collections.Counter()
        self._raw: BinaryIO | None = None
        self._stream: BinaryIO | None = None
        self._tmp: Path | None = None
        self._closed = False

    @property
    def total(self) -> int:
        """Number of records quarantined so far."""
        return sum(self.counts.values())

    def add(
        self,
        reason: str,
        location: str,
        raw: bytes | str | None = None,
        detail: str = "",
        *,
        raw_size: int | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Quarantine one record. ``raw_size`` gives the original length when ``raw`` is already only a prefix;
        ``fields`` are extra keys of the entry (an offset, a size)."""
        if self._closed:
            raise ValueError(f"quarantine {self.path} is closed")
        entry = {"reason": reason, "location": location, "detail": detail, **_raw_fields(raw, self.keep_raw_bytes)}
        if raw_size is not None and raw_size > entry["raw_bytes"]:
            entry["raw_bytes"] = raw_size
            entry["raw_truncated"] = True
        for key, value in (fields or {}).items():
            entry.setdefault(key, value)
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        if self._stream is None:
            self._open()
        assert self._stream is not None
        self._stream.write(line.encode("utf-8"))
        self.counts[reason] += 1
        if self.on_add is not None:
            self.on_add(reason)

    def _open(self) -> None:
        fd, self._tmp = temp_file_beside(self.path)
        self._raw = os.fdopen(fd, "wb")
        self._stream = compressed_writer(self._raw, compression_for(self.path))

    def close(self) -> None:
        """Finish the file and rename it into place (nothing is created when nothing was added). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._stream is None or self._raw is None or self._tmp is None:
            return
        self._stream.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.path)
        self._stream = self._raw = self._tmp = None

    def __enter__(self) -> Quarantine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _raw_fields(raw: bytes | str | None, keep: int) -> dict[str, Any]:
    if raw is None:
        return {"raw": None, "raw_bytes": 0, "raw_truncated": False}
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    size = len(data)
    kept = data[: max(keep, 0)]
    truncated = len(kept) < size
    text = _utf8_or_none(kept, truncated)
    if text is not None:
        return {"raw": text, "raw_bytes": size, "raw_truncated": truncated}
    return {
        "raw": base64.b64encode(kept).decode("ascii"),
        "raw_encoding": "base64",
        "raw_bytes": size,
        "raw_truncated": truncated,
    }


def _utf8_or_none(data: bytes, truncated: bool) -> str | None:
    """Decode strictly; a cut may split the last character, so a truncated prefix may lose up to 3 bytes."""
    for cut in range(4 if truncated else 1):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def decode_raw(entry: dict[str, Any]) -> bytes | None:
    """The raw bytes a quarantine entry kept (possibly a prefix; see ``raw_truncated``), or ``None``."""
    raw = entry.get("raw")
    if raw is None:
        return None
    if entry.get("raw_encoding") == "base64":
        return base64.b64decode(raw)
    return raw.encode("utf-8")


def read_quarantine(path: str | Path) -> Iterator[dict[str, Any]]:
    """Iterate over the entries of a quarantine file; a missing file means nothing was quarantined."""
    path = Path(path)
    if not path.exists():
        return
    with open_compressed_reader(path) as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
