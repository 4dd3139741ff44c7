"""Readers that turn raw input files (JSON lines, Parquet, WARC/WET) into Documents.

Every input record either yields exactly one Document or is added to the quarantine exactly once; bad data
never raises. Damage that ends a file early (a truncated or corrupt ``.gz``/``.zst``, an unreadable file) is
one quarantine entry with a file-level reason (``FILE_REASONS``) and is not a record itself.

JSON lines rules:

* Records are the newline-separated lines, numbered from 1 in locations ``<path>:<line>``. A final line
  without a newline is a record too. A line of only whitespace is *not* a record and is skipped silently
  (but still numbered). A line longer than ``max_doc_bytes`` is ``too_large`` whatever it contains; it is not
  decoded and at most the quarantine's ``keep_raw_bytes`` of it are held in memory.
* When a compressed file is damaged, the lines before the damage are read normally and the partial line in
  progress is kept as the raw of the single ``truncated_compressed_file`` entry, located at that line. A
  plain file whose last line was cut off cannot be told from a malformed one: it is ``invalid_json``.
* A compressed file from which nothing at all could be decompressed (not gzip/zstd data) is
  ``unreadable_file``; a stream that ends early is always ``truncated_compressed_file``.

Fields of JSON lines and Parquet records: the text is ``spec.text_key`` (absent or null: ``missing_text``;
not a string: ``non_string_text``; empty or whitespace only: ``empty_text``). The id is ``spec.id_key`` when it
is a non-empty string or an integer, else ``<source>/<file name without suffixes>/<line or row<N>>`` (any
unusable id value is kept as ``metadata["raw_id"]``). ``url`` is taken when it is a string. ``metadata`` is
the record's ``metadata`` object (anything else goes under ``metadata["raw_metadata"]``), plus every other
top-level field that does not clash with a key already there.

Parquet rows are located as ``<path>:row<N>`` and WARC records as ``<path>:record<N>@<offset>``, both counted
from 0; the WARC offset is the byte offset of the record in the decompressed WARC stream. WARC ``response``
records with an HTML payload and WET ``conversion`` records are documents; other record types are skipped
without being counted, and a response that is not HTML is quarantined as ``warc_no_html`` (without its bytes).
"""

from __future__ import annotations

import base64
import codecs
import datetime
import decimal
import json
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import zstandard

from lmhpc.curate.config import InputSpec
from lmhpc.data.documents import Document
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.writers import compression_for, open_compressed_reader

INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
EMPTY_TEXT = "empty_text"
TOO_LARGE = "too_large"
TRUNCATED_COMPRESSED_FILE = "truncated_compressed_file"
UNREADABLE_FILE = "unreadable_file"
INVALID_RECORD = "invalid_record"
WARC_NO_HTML = "warc_no_html"
HTML_EXTRACTION_FAILED = "html_extraction_failed"

REASONS = (
    INVALID_JSON,
    INVALID_UTF8,
    MISSING_TEXT,
    NON_STRING_TEXT,
    EMPTY_TEXT,
    TOO_LARGE,
    TRUNCATED_COMPRESSED_FILE,
    UNREADABLE_FILE,
    INVALID_RECORD,
    WARC_NO_HTML,
    HTML_EXTRACTION_FAILED,
)
FILE_REASONS = frozenset({TRUNCATED_COMPRESSED_FILE, UNREADABLE_FILE})  # damage to a file, not one record

FORMAT_SUFFIXES = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz", ".wet", ".wet.gz"),
}
_ALL_SUFFIXES = sorted((s for group in FORMAT_SUFFIXES.values() for s in group), key=len, reverse=True)
_CHUNK = 1 << 20
_PARQUET_BATCH = 256
_READ_ERRORS = (OSError, EOFError, zlib.error, zstandard.ZstdError)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_CHARSET = re.compile(r"charset\s*=\s*[\"']?([^\s\"';]+)", re.IGNORECASE)
_HTML_TYPES = ("text/html", "application/xhtml+xml")
_LMHPC_HEADER = "warc-lmhpc-"


def detect_format(path: Path) -> str:
    """``"jsonl"``, ``"parquet"`` or ``"warc"`` from the file name; ``ValueError`` for anything else."""
    name = Path(path).name.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for group in FORMAT_SUFFIXES.values() for s in group)
    raise ValueError(f"cannot tell the format of {path}: expected a name ending in one of {known}, "
                     "or set the input's format explicitly")


def read_documents(
    path: Path,
    spec: InputSpec,
    quarantine: Quarantine,
    max_doc_bytes: int = 20_000_000,
    default_source: str | None = None,
) -> Iterator[Document]:
    """Stream the documents of one input file; bad records go to ``quarantine`` (see the module docstring).

    The source is ``spec.source``, else the record's own ``source`` field (JSON lines and Parquet), else
    ``default_source``, else the name of the file's folder. Raises ``ValueError`` only for an unknown format.
    """
    path = Path(path)
    fmt = detect_format(path) if spec.format == "auto" else spec.format
    ctx = _Input(path, spec, quarantine, max_doc_bytes, default_source)
    if fmt == "jsonl":
        return _read_jsonl(ctx)
    if fmt == "parquet":
        return _read_parquet(ctx)
    if fmt == "warc":
        return _read_warc(ctx)
    raise ValueError(f"unknown input format {fmt!r} for {path}")


@dataclass
class _Input:
    path: Path
    spec: InputSpec
    quarantine: Quarantine
    max_doc_bytes: int
    default_source: str | None

    @property
    def stem(self) -> str:
        name = self.path.name
        for suffix in _ALL_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return self.path.stem

    def source(self, own: object = None) -> str:
        if self.spec.source:
            return self.spec.source
        if isinstance(own, str) and own:
            return own
        if self.default_source:
            return self.default_source
        return self.path.parent.name or self.path.resolve().parent.name

    def add(self, reason: str, location: str, raw: bytes | str | None = None, detail: str = "", **kw: Any) -> None:
        self.quarantine.add(reason, location, raw, detail, **kw)

    def open(self) -> BinaryIO | None:
        """The file's decompressed byte stream, or None (the file quarantined as unreadable)."""
        try:
            return open_compressed_reader(self.path)
        except OSError as exc:
            self.add(UNREADABLE_FILE, str(self.path), detail=_error(exc))
            return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- records


def _record_to_document(ctx: _Input, record: dict[str, Any], label: str) -> Document | tuple[str, str]:
    """Build a Document from a decoded record, or return ``(reason, detail)`` for the quarantine."""
    key = ctx.spec.text_key
    text = record.get(key)
    if text is None:
        return MISSING_TEXT, f"no {key!r} field" if key not in record else f"{key!r} is null"
    if not isinstance(text, str):
        return NON_STRING_TEXT, f"{key!r} is {type(text).__name__}, not a string"
    if not text.strip():
        return EMPTY_TEXT, f"{key!r} is empty or whitespace only"
    metadata: dict[str, Any] = {}
    raw_meta = record.get("metadata")
    if isinstance(raw_meta, dict):
        metadata.update(raw_meta)
    elif raw_meta is not None:
        metadata["raw_metadata"] = raw_meta
    own_source, url = record.get("source"), record.get("url")
    if own_source is not None and not isinstance(own_source, str):
        metadata["raw_source"] = own_source
    if url is not None and not isinstance(url, str):
        metadata["raw_url"] = url
        url = None
    reserved = {key, ctx.spec.id_key, "source", "url", "metadata"}
    for name, value in record.items():
        if name not in reserved:
            metadata.setdefault(name, value)
    source = ctx.source(own_source)
    rid = record.get(ctx.spec.id_key)
    if (isinstance(rid, str) and rid) or (isinstance(rid, int) and not isinstance(rid, bool)):
        doc_id = str(rid)
    else:
        doc_id = f"{source}/{ctx.stem}/{label}"
        if rid is not None:
            metadata["raw_id"] = rid
    return Document(id=doc_id, text=text, source=source, url=url, metadata=metadata)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _is_utf8_encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- JSON lines


class _Line(NamedTuple):
    number: int
    data: bytes  # the whole line, or only its first ``keep`` bytes when ``size > max_line``
    size: int


class _LineSplitter:
    """Splits a byte stream into lines, holding at most ``max(max_line, keep)`` bytes of any one line."""

    def __init__(self, max_line: int, keep: int) -> None:
        self.max_line, self.keep = max_line, keep
        self.line_no = 0  # complete lines handed out
        self.bytes_seen = 0
        self._parts: list[bytes] = []
        self._kept = 0
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[_Line]:
        self.bytes_seen += len(chunk)
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            self._append(piece)
            yield self._take()
        self._append(pieces[-1])

    def finish(self) -> Iterator[_Line]:
        if self._size:
            yield self._take()

    def partial(self) -> tuple[bytes, int]:
        """The bytes held of the line in progress and its size so far."""
        return b"".join(self._parts)[: self.keep], self._size

    def _append(self, piece: bytes) -> None:
        self._size += len(piece)
        room = (self.max_line if self._size <= self.max_line else self.keep) - self._kept
        if room > 0 and piece:
            self._parts.append(piece[:room] if room < len(piece) else piece)
            self._kept += min(room, len(piece))

    def _take(self) -> _Line:
        self.line_no += 1
        data = b"".join(self._parts)
        if self._size > self.max_line:
            data = data[: self.keep]
        line = _Line(self.line_no, data, self._size)
        self._parts, self._kept, self._size = [], 0, 0
        return line


def _read_jsonl(ctx: _Input) -> Iterator[Document]:
    fh = ctx.open()
    if fh is None:
        return
    compressed = compression_for(ctx.path) != "none"
    lines = _LineSplitter(ctx.max_doc_bytes, ctx.quarantine.keep_raw_bytes)
    with fh:
        while True:
            try:
                chunk = fh.read1(_CHUNK)
            except _READ_ERRORS as exc:
                _jsonl_damage(ctx, lines, exc, compressed)
                return
            if not chunk:
                break
            for line in lines.feed(chunk):
                doc = _jsonl_line(ctx, line)
                if doc is not None:
                    yield doc
        for line in lines.finish():
            doc = _jsonl_line(ctx, line)
            if doc is not None:
                yield doc


def _jsonl_damage(ctx: _Input, lines: _LineSplitter, exc: BaseException, compressed: bool) -> None:
    if compressed and (isinstance(exc, EOFError) or lines.bytes_seen):
        reason = TRUNCATED_COMPRESSED_FILE
    else:
        reason = UNREADABLE_FILE
    raw, size = lines.partial()
    detail = f"{_error(exc)} (after {lines.line_no} complete lines)"
    ctx.add(reason, f"{ctx.path}:{lines.line_no + 1}", raw, detail, raw_size=size)


def _jsonl_line(ctx: _Input, line: _Line) -> Document | None:
    loc = f"{ctx.path}:{line.number}"
    if line.size > ctx.max_doc_bytes:
        detail = f"line of {line.size} bytes exceeds max_doc_bytes={ctx.max_doc_bytes}"
        ctx.add(TOO_LARGE, loc, line.data, detail, raw_size=line.size)
        return None
    if not line.data.strip():
        return None  # a blank line is not a record
    data = line.data[3:] if line.number == 1 and line.data.startswith(codecs.BOM_UTF8) else line.data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ctx.add(INVALID_UTF8, loc, line.data, str(exc))
        return None
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        ctx.add(INVALID_JSON, loc, line.data, _error(exc))
        return None
    if not isinstance(record, dict):
        ctx.add(INVALID_RECORD, loc, line.data, f"JSON {type(record).__name__} is not an object")
        return None
    if _SURROGATE_ESCAPE.search(data) and not _is_utf8_encodable(record):
        ctx.add(INVALID_UTF8, loc, line.data, "unpaired surrogate escape (\\ud800-\\udfff)")
        return None
    result = _record_to_document(ctx, record, str(line.number))
    if isinstance(result, Document):
        return result
    ctx.add(result[0], loc, line.data, result[1])
    return None


# ---------------------------------------------------------------------------------------------- Parquet


def _json_safe(value: Any) -> Any:
    """Arrow values as plain JSON values (NaN/inf become null, bytes UTF-8 text or ``{"base64": ...}``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return str(value)


def _read_parquet(ctx: _Input) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (pa.ArrowException, OSError, ValueError, EOFError)
    try:
        pf = pq.ParquetFile(ctx.path)
        batches = pf.iter_batches(batch_size=_PARQUET_BATCH)
    except errors as exc:
        ctx.add(UNREADABLE_FILE, str(ctx.path), detail=_error(exc))
        return
    row = 0
    try:
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                return
            except errors as exc:
                ctx.add(UNREADABLE_FILE, f"{ctx.path}:row{row}", detail=f"{_error(exc)} (after {row} rows)")
                return
            for record in rows:
                doc = _parquet_row(ctx, record, row)
                row += 1
                if doc is not None:
                    yield doc
    finally:
        pf.close()


def _parquet_row(ctx: _Input, record: dict[str, Any], row: int) -> Document | None:
    loc, key = f"{ctx.path}:row{row}", ctx.spec.text_key
    text = record.get(key)
    clean = {k: _json_safe(v) for k, v in record.items() if k != key}
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            ctx.add(INVALID_UTF8, loc, bytes(text), str(exc))
            return None
    clean[key] = text if text is None or isinstance(text, str) else _json_safe(text)
    if isinstance(text, str) and len(text) > ctx.max_doc_bytes // 4 and len(text.encode()) > ctx.max_doc_bytes:
        detail = f"text of {len(text.encode())} bytes exceeds max_doc_bytes={ctx.max_doc_bytes}"
        ctx.add(TOO_LARGE, loc, text[: ctx.quarantine.keep_raw_bytes], detail, raw_size=len(text.encode()))
        return None
    result = _record_to_document(ctx, clean, f"row{row}")
    if isinstance(result, Document):
        return result
    ctx.add(result[0], loc, json.dumps(clean, ensure_ascii=False), result[1])
    return None


# ---------------------------------------------------------------------------------------------- WARC / WET


class _GuardedStream:
    """Short reads from a decompressed stream for warcio, remembering the first error the stream raised."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: BaseException | None = None
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._fh.read1(size if size and size > 0 else _CHUNK)  # type: ignore[attr-defined]
        except Exception as exc:
            self.error = exc
            raise
        self.position += len(data)
        return data

    def tell(self) -> int:
        return self.position


class _StreamDamage(Exception):
    """The file itself failed (decompression or I/O) while a record was being read."""


def _read_warc(ctx: _Input) -> Iterator[Document]:
    from warcio.archiveiterator import ArchiveIterator

    fh = ctx.open()
    if fh is None:
        return
    compressed = compression_for(ctx.path) != "none"
    stream = _GuardedStream(fh)
    with fh:
        records = ArchiveIterator(stream)
        records.known_format = "warc"  # never fall back to guessing the old ARC format
        index = 0
        while True:
            try:
                record = next(records)
            except StopIteration:  # warcio also ends quietly on an EOFError from the stream
                if stream.error is not None:
                    _warc_damage(ctx, stream, stream.error, compressed, index, records.offset)
                elif records.offset < stream.position:
                    detail = f"{stream.position - records.offset} bytes after the last record are not a WARC record"
                    ctx.add(INVALID_RECORD, f"{ctx.path}:record{index}@{records.offset}", detail=detail)
                return
            except Exception as exc:  # warcio parses untrusted bytes and may fail in many ways
                _warc_damage(ctx, stream, exc, compressed, index, records.offset)
                return
            loc = f"{ctx.path}:record{index}@{records.offset}"
            try:
                doc = _warc_record(ctx, stream, record, index, loc)
            except _StreamDamage as exc:
                _warc_damage(ctx, stream, exc.__cause__ or exc, compressed, index, records.offset)
                return
            index += 1
            if doc is not None:
                yield doc


def _warc_damage(
    ctx: _Input, stream: _GuardedStream, exc: BaseException, compressed: bool, index: int, record_offset: int
) -> None:
    """One entry for damage that ends the file: at the failing record, or where the stream broke."""
    if stream.error is not None:
        damaged = compressed and (isinstance(stream.error, EOFError) or stream.position > 0)
        reason = TRUNCATED_COMPRESSED_FILE if damaged else UNREADABLE_FILE
        offset = stream.position  # every byte decoded before the damage has been read by then
    else:
        reason = UNREADABLE_FILE if index == 0 else INVALID_RECORD
        offset = record_offset
    ctx.add(reason, f"{ctx.path}:record{index}@{offset}", detail=f"{_error(exc)} (after {index} WARC records)")


def _lmhpc_headers(record: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in record.rec_headers.headers:
        if name.lower().startswith(_LMHPC_HEADER) and len(name) > len(_LMHPC_HEADER):
            out[name[len(_LMHPC_HEADER) :].lower().replace("-", "_")] = value
    return out


def _read_payload(ctx: _Input, stream: _GuardedStream, record: Any, loc: str, keep: bool = True) -> bytes | None:
    """The record's payload (at most ``max_doc_bytes + 1`` bytes held), or None after quarantining it.

    The whole record is consumed; one that the file ends inside is quarantined as ``invalid_record``.
    """
    try:
        body = record.content_stream().read(ctx.max_doc_bytes + 1) if keep else b""
        while record.raw_stream.read(_CHUNK):
            pass
    except Exception as exc:  # chunked / content-encoded payloads are decoded from untrusted bytes
        if stream.error is not None:
            raise _StreamDamage() from exc
        ctx.add(INVALID_RECORD, loc, detail=f"cannot decode the record's payload: {_error(exc)}")
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
        ctx.add(TOO_LARGE, loc, body[: ctx.quarantine.keep_raw_bytes], detail)
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


def _warc_record(ctx: _Input, stream: _GuardedStream, record: Any, index: int, loc: str) -> Document | None:
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
            ctx.add(HTML_EXTRACTION_FAILED, loc, body, _error(exc))
            return None
    if not text.strip():
        ctx.add(EMPTY_TEXT, loc, body, f"no text extracted from {uri}")
        return None
    metadata.update(_lmhpc_headers(record))
    source = ctx.source()
    doc_id = headers.get_header("WARC-Record-ID") or f"{source}/{ctx.stem}/record{index}"
    return Document(id=doc_id, text=text, source=source, url=uri, metadata=metadata)
