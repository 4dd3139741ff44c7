"""WARC and WET records as Documents (the WARC part of ``lmhpc.data.readers``).

Records are located as ``<path>:record<N>@<offset>``, counted from 0; the offset is the record's byte offset
in the decompressed stream. ``response`` records with an HTML payload and WET ``conversion`` records are
documents (HTML through resiliparse's main-content extraction; a text that comes out empty is still a
document, for the stage to drop); other record types are skipped without being counted, and a response that
is not HTML is quarantined as ``warc_no_html`` (without its bytes).

A ``.warc.gz`` is read member by member (``lmhpc.data.resync``): a corrupt member is one ``corrupt`` entry and
reading resumes at the next record header after it, so the records after the damage are still read; a file
that ends inside a member is ``truncated``. A plain WARC cut inside a record is ``invalid_record``.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from typing import Any

from lmhpc.data.documents import Document
from lmhpc.data.readers import (
    HTML_EXTRACTION_FAILED,
    INVALID_RECORD,
    TOO_LARGE,
    UNREADABLE_FILE,
    WARC_NO_HTML,
    InputFile,
    error_text,
)
from lmhpc.data.resync import Damage, decode_events
from lmhpc.data.writers import compression_for

# a record's member is decoded whole before the parser sees it (a record is one gzip member): damage near the
# end of a member then costs that record only, instead of garbling the parse of the records after it
MEMBER_HOLD_BYTES = 64 << 20

_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\s\"';]+)", re.IGNORECASE)
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_LMHPC_HEADER = "warc-lmhpc-"
_RECORD_START = b"WARC/"


class _Damaged(Exception):
    """The stream reached damaged bytes; raised to whoever reads on."""


class _EventStream:
    """The decoded bytes of a file as a stream for warcio, which stops (raises) at every damaged region."""

    def __init__(self, events: Iterator[bytes | Damage]) -> None:
        self._events = events
        self._buf = b""
        self._off = 0
        self.position = 0  # decoded bytes handed out or skipped
        self.damage: Damage | None = None

    def _next_chunk(self) -> bool:
        """Load the next decoded chunk; False at the end or at damage (then ``self.damage`` is set)."""
        event = next(self._events, None)
        if isinstance(event, Damage):
            self.damage = event
        if not isinstance(event, bytes):
            return False
        self._buf, self._off = event, 0
        return True

    def read(self, size: int = -1) -> bytes:
        if self.damage is None and self._off >= len(self._buf):
            self._next_chunk()
        if self.damage is not None:
            raise _Damaged(self.damage.error)
        end = len(self._buf) if size is None or size < 0 else self._off + size
        data = self._buf[self._off : end]
        self._off += len(data)
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position

    def _advance(self, n: int) -> None:
        self._off += n
        self.position += n

    def resume(self) -> int:
        """After damage: skip to the next line that starts a WARC record; the number of bytes skipped."""
        self.damage = None
        before = self.position
        line_start = True  # decoding resumed at a member boundary
        while self._off < len(self._buf) or self._next_chunk():
            if not line_start:
                newline = self._buf.find(b"\n", self._off)
                self._advance(len(self._buf) - self._off if newline < 0 else newline + 1 - self._off)
                line_start = newline >= 0
                continue
            if len(self._buf) - self._off < len(_RECORD_START):  # too few bytes to tell: join the next chunk
                tail = self._buf[self._off :]
                if not self._next_chunk():
                    self.position += len(tail)
                    break
                self._buf = tail + self._buf
                continue
            if self._buf.startswith(_RECORD_START, self._off):
                break
            line_start = False
        return self.position - before


def read_warc(ctx: InputFile) -> Iterator[Document]:
    """The documents of one WARC/WET file (see the module docstring)."""
    from warcio.archiveiterator import ArchiveIterator

    stream = _EventStream(decode_events(ctx.path, compression_for(ctx.path), member_hold_bytes=MEMBER_HOLD_BYTES))
    index = 0
    while True:
        start = stream.position
        records = ArchiveIterator(stream)
        records.known_format = "warc"  # never fall back to guessing the old ARC format
        index = yield from _read_segment(ctx, stream, records, start, index)
        damage, at = stream.damage, stream.position
        if damage is None:
            return
        skipped = stream.resume() if damage.resumed else 0
        detail = f"{damage.describe()} (after {index} WARC records)"
        if skipped:
            detail += f"; {skipped} decoded bytes before the next record header skipped"
        ctx.add(damage.reason, f"{ctx.path}:record{index}@{at}", detail=detail,
                fields={"offset": damage.offset, "skipped_bytes": damage.size})
        index += 1
        if not damage.resumed:
            return


def _read_segment(ctx: InputFile, stream: _EventStream, records: Any, start: int, index: int
                  ) -> Generator[Document, None, int]:
    """Read records up to the end of the file or the next damage; returns the next record index. A record
    that the damage cuts off is part of the damaged region, not an entry of its own."""
    while True:
        try:
            record = next(records)
        except StopIteration:  # warcio also ends quietly on an EOFError from the stream
            if stream.damage is None and start + records.offset < stream.position:
                detail = f"{stream.position - start - records.offset} bytes after the last record are not a WARC record"
                ctx.add(INVALID_RECORD, f"{ctx.path}:record{index}@{start + records.offset}", detail=detail)
            return index
        except Exception as exc:  # warcio parses untrusted bytes and may fail in many ways
            if stream.damage is None:
                reason = UNREADABLE_FILE if index == 0 else INVALID_RECORD
                ctx.add(reason, f"{ctx.path}:record{index}@{start + records.offset}",
                        detail=f"{error_text(exc)} (after {index} WARC records)")
            return index
        loc = f"{ctx.path}:record{index}@{start + records.offset}"
        try:
            doc = _warc_record(ctx, stream, record, index, loc)
        except _Damaged:
            return index
        index += 1
        if doc is not None:
            yield doc


def _lmhpc_headers(record: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in record.rec_headers.headers:
        if name.lower().startswith(_LMHPC_HEADER) and len(name) > len(_LMHPC_HEADER):
            out[name[len(_LMHPC_HEADER) :].lower().replace("-", "_")] = value
    return out


def _read_payload(ctx: InputFile, stream: _EventStream, record: Any, loc: str, keep: bool = True) -> bytes | None:
    """The record's payload (at most ``max_doc_bytes + 1`` bytes held), or None after quarantining it.

    The whole record is consumed; one that the file ends inside is quarantined as ``invalid_record``.
    """
    try:
        body = record.content_stream().read(ctx.max_doc_bytes + 1) if keep else b""
        while record.raw_stream.read(1 << 20):
            pass
    except Exception as exc:  # chunked / content-encoded payloads are decoded from untrusted bytes
        if stream.damage is not None:
            raise _Damaged(stream.damage.error) from exc
        ctx.add(INVALID_RECORD, loc, detail=f"cannot decode the record's payload: {error_text(exc)}")
        return None
    if record.length is None:
        ctx.add(INVALID_RECORD, loc, body, f"WARC {record.rec_type} record without Content-Length")
        return None
    missing = getattr(record.raw_stream, "limit", 0)
    if missing > 0:
        ctx.add(INVALID_RECORD, loc, body, f"WARC {record.rec_type} record truncated: {missing} bytes missing")
        return None
    if len(body) > ctx.max_doc_bytes:
        length = record.rec_headers.get_header("Content-Length")
        detail = f"payload exceeds max_doc_bytes={ctx.max_doc_bytes} (WARC Content-Length {length})"
        size = int(length) if length and length.strip().isdigit() else len(body)
        ctx.add(TOO_LARGE, loc, body[: ctx.oversized_prefix], detail, raw_size=max(size, len(body)))
        return None
    return body


def _decode(body: bytes, charset: str) -> str | None:
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError, ValueError):
        return None


def _decode_html(body: bytes, content_type: str) -> tuple[str, dict[str, Any]]:
    """Decode with the declared charset, else UTF-8 (invalid bytes replaced); the metadata says which."""
    match = _CHARSET.search(content_type)
    declared = match.group(1) if match else None
    if declared and (text := _decode(body, declared)) is not None:
        return text, {"charset": declared.lower()}
    meta: dict[str, Any] = {"charset": "utf-8", "charset_fallback": True}
    if declared:
        meta["declared_charset"] = declared
    return _decode_utf8(body, meta), meta


def _decode_utf8(body: bytes, meta: dict[str, Any]) -> str:
    text = _decode(body, "utf-8")
    if text is None:
        meta["decode_errors"] = True
        text = body.decode("utf-8", errors="replace")
    return text


def _is_html(media: str, declared: bool, body: bytes) -> bool:
    """HTML by content type; without a declared type, by the document's first bytes."""
    if declared:
        return media in _HTML_TYPES
    head = body[:1024].lstrip().lower()
    return head.startswith(b"<!doctype html") or b"<html" in head


def _warc_record(ctx: InputFile, stream: _EventStream, record: Any, index: int, loc: str) -> Document | None:
    if record.rec_type not in ("response", "conversion"):
        _read_payload(ctx, stream, record, loc, keep=False)  # only notices a record cut off by the file's end
        return None  # warcinfo, request, metadata, revisit, ...: not documents
    headers = record.rec_headers
    uri = headers.get_header("WARC-Target-URI")
    body = _read_payload(ctx, stream, record, loc)
    if body is None:
        return None
    metadata: dict[str, Any] = {}
    if record.rec_type == "conversion":
        metadata["content_type"] = (headers.get_header("Content-Type") or "text/plain").split(";")[0].strip().lower()
        text = _decode_utf8(body, metadata)
    else:
        http_type = record.http_headers.get_header("Content-Type") if record.http_headers else None
        content_type = http_type or ""
        media = content_type.split(";")[0].strip().lower()
        if not _is_html(media, bool(media), body):
            ctx.add(WARC_NO_HTML, loc, detail=f"content type {content_type!r} of {uri}")
            return None
        html, charset_meta = _decode_html(body, content_type)
        metadata = {"content_type": media or "text/html", **charset_meta}
        try:
            from resiliparse.extract.html2text import extract_plain_text

            text = extract_plain_text(html, main_content=True)
        except Exception as exc:  # the extractor may reject malformed documents
            ctx.add(HTML_EXTRACTION_FAILED, loc, body, error_text(exc))
            return None
    metadata.update(_lmhpc_headers(record))
    source = ctx.source()
    doc_id = headers.get_header("WARC-Record-ID") or f"{source}/{ctx.stem}/record{index}"
    return Document(id=doc_id, text=text, source=source, url=uri, metadata=metadata)
