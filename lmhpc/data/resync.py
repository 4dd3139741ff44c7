"""Decompression that survives damage: a gzip or zstd file read member by member (frame by frame for zstd),
resuming at the next member after a corrupt one.

``decode_events(path)`` yields the decompressed bytes in order, with a ``Damage`` wherever bytes were lost:

* ``corrupt``: a member failed to decode (bad data, bad checksum, bytes that are not a member). Reading
  resumes at the next member header (gzip ``1f 8b 08``, zstd ``28 b5 2f fd``) that decodes; the region from
  the failing member's start to that header, or to the end of the file, is one ``Damage``.
* ``truncated``: the file ends inside a member (that decoded without error so far), and no member after it
  decodes.
* ``unreadable_file``: the file cannot be opened or read, or nothing at all in it decodes.

A header found while resynchronising may be a chance match inside damaged data, so what it decodes is held
back until its member ends with a good checksum or ``CONFIRM_BYTES`` have been decoded without error. Output
decoded before a member fails is kept: it is the data that precedes the damage. Zero bytes after the last
member (block padding) are ignored.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

CORRUPT = "corrupt"
TRUNCATED = "truncated"
UNREADABLE_FILE = "unreadable_file"

CONFIRM_BYTES = 1 << 20  # decoded bytes that confirm a member found while resynchronising
_READ = 1 << 20  # compressed bytes read from the file at a time
_PIECE = 8192  # compressed bytes fed per step: bounds the output one step can produce
_KEEP_BEHIND = 1 << 20  # compressed bytes kept behind the decoder, where the next member may start
_MAGIC = {"gz": b"\x1f\x8b\x08", "zst": b"\x28\xb5\x2f\xfd"}
_ZSTD_MAX_WINDOW = 2**31
_ERRORS = (zlib.error, zstandard.ZstdError, EOFError)


@dataclass(frozen=True)
class Damage:
    """Bytes of a file that could not be decoded."""

    reason: str  # CORRUPT, TRUNCATED or UNREADABLE_FILE
    offset: int  # byte offset in the (compressed) file where the damaged region starts
    size: int  # compressed bytes in the region: skipped, or lost at the end of the file
    error: str
    resumed: bool  # decoding went on after the region

    def describe(self) -> str:
        """One line for a quarantine entry."""
        where = f"{self.size} bytes from byte {self.offset}"
        what = "skipped, reading resumed at the next member" if self.resumed else "lost up to the end of the file"
        return f"{self.error}; {where} {what}"


def decode_events(path: Path, codec: str, member_hold_bytes: int = 0) -> Iterator[bytes | Damage]:
    """The decompressed bytes of ``path`` (``codec`` ``"gz"``, ``"zst"`` or ``"none"``) with ``Damage`` events.

    ``member_hold_bytes``: each member's output is held back (up to this many bytes) until the member ends with
    a valid checksum, so a member damaged near its end yields nothing rather than garbled bytes. WARC files,
    one record per member, use it; a single-member ``.jsonl.gz`` of gigabytes cannot be held."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        yield Damage(UNREADABLE_FILE, 0, 0, _error(exc), False)
        return
    with fh:
        if codec == "none":
            yield from _plain(fh)
        else:
            yield from _MemberReader(fh, codec, member_hold_bytes).events()


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _plain(fh: BinaryIO) -> Iterator[bytes | Damage]:
    offset = 0
    while True:
        try:
            chunk = fh.read(_READ)
        except OSError as exc:
            yield Damage(UNREADABLE_FILE, offset, 0, _error(exc), False)
            return
        if not chunk:
            return
        offset += len(chunk)
        yield chunk


class _Window:
    """The compressed file from ``base`` on, read on demand; bytes before ``base`` are gone."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.buf = bytearray()
        self.base = 0
        self.eof = False

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def _more(self) -> bool:
        if self.eof:
            return False
        chunk = self._fh.read(_READ)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def get(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``pos``; empty at the end of the file."""
        while self.end < pos + n and self._more():
            pass
        return bytes(self.buf[pos - self.base : pos - self.base + n])

    def drop_before(self, pos: int) -> None:
        target = min(pos, self.end)
        if target > self.base:
            del self.buf[: target - self.base]
            self.base = target

    def find(self, magic: bytes, pos: int) -> int | None:
        """The first offset >= ``pos`` where ``magic`` starts, reading on as far as needed."""
        pos = max(pos, self.base)
        while True:
            hit = self.buf.find(magic, pos - self.base)
            if hit >= 0:
                return self.base + hit
            pos = max(pos, self.end - len(magic) + 1)
            self.drop_before(pos)
            if not self._more():
                return None

    def zeros_to_end(self, pos: int) -> bool:
        """Whether every byte from ``pos`` to the end of the file is zero."""
        while True:
            if any(self.buf[pos - self.base :]):
                return False
            pos = self.end
            self.drop_before(pos)
            if not self._more():
                return True


class _MemberFailed(Exception):
    def __init__(self, error: str, truncated: bool) -> None:
        super().__init__(error)
        self.error, self.truncated = error, truncated


class _MemberReader:
    def __init__(self, fh: BinaryIO, codec: str, member_hold_bytes: int = 0) -> None:
        self.window = _Window(fh)
        self.member_hold_bytes = member_hold_bytes
        self.codec = codec
        self.magic = _MAGIC[codec]
        self.decoded = 0
        self._end = 0  # where the member last decoded ended

    def _decompressor(self) -> Any:
        if self.codec == "gz":
            return zlib.decompressobj(wbits=31)
        return zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW).decompressobj()

    def events(self) -> Iterator[bytes | Damage]:
        pos = 0
        damage_at: int | None = None  # start of the damaged region being skipped
        error, truncated = "", False
        try:
            while self.window.get(pos, 1):
                if damage_at is None and self.window.get(pos, 1) == b"\0" and self.window.zeros_to_end(pos):
                    return
                try:
                    hold = CONFIRM_BYTES if damage_at is not None else self.member_hold_bytes
                    for out in self._member(pos, hold):
                        if damage_at is not None:
                            yield Damage(CORRUPT, damage_at, pos - damage_at, error, True)
                            damage_at = None
                        self.decoded += len(out)
                        yield out
                except _MemberFailed as failed:
                    if damage_at is None:  # a member that seems cut off may have a damaged header: look on
                        damage_at, error, truncated = pos, failed.error, failed.truncated
                    found = self.window.find(self.magic, pos + 1)
                    if found is None:
                        break
                    pos = found
                    continue
                if damage_at is not None:  # a member without output, confirmed by its checksum
                    yield Damage(CORRUPT, damage_at, pos - damage_at, error, True)
                    damage_at = None
                pos = self._end
        except OSError as exc:
            yield Damage(UNREADABLE_FILE, pos, 0, _error(exc), False)
            return
        if damage_at is not None:
            if truncated:
                reason = TRUNCATED
            else:
                reason = UNREADABLE_FILE if damage_at == 0 and not self.decoded else CORRUPT
            yield Damage(reason, damage_at, self.window.end - damage_at, error, False)

    def _member(self, start: int, hold: int) -> Iterator[bytes]:
        """Decode the member at ``start``; ``self._end`` is where it ended. Its first ``hold`` bytes of output come
        only once confirmed (that many decoded, or the member's end with a valid checksum). Raises
        ``_MemberFailed``."""
        d = self._decompressor()
        pos, held, held_size = start, [], 0
        while True:
            piece = self.window.get(pos, _PIECE)
            if not piece:
                raise _MemberFailed("the file ends inside a member", truncated=True)
            try:
                out = d.decompress(piece)
            except _ERRORS as exc:
                raise _MemberFailed(_error(exc), truncated=False) from exc
            if out:
                if held_size < hold:
                    held.append(out)
                    held_size += len(out)
                else:
                    yield out
            if held and held_size >= hold:
                yield from held
                held = []
            if d.eof:
                self._end = pos + len(piece) - len(d.unused_data)
                yield from held
                return
            pos += len(piece)
            self.window.drop_before(max(start + 1, pos - _KEEP_BEHIND))
