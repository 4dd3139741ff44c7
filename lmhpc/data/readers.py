"""Readers that turn raw input files (JSON lines, Parquet, WARC/WET) into Documents.

Every input record either yields exactly one Document or is added to the quarantine exactly once; bad data
never raises. A file that cannot be read at all, or whose format is unknown, is one ``unreadable_file`` entry.
Damage to a compressed file (``lmhpc.data.resync``) is one entry per damaged region, ``corrupt`` when bytes
could not be decoded (reading resumes at the next gzip member or zstd frame) or ``truncated`` when the file
ends inside a member; these file-level entries (``FILE_REASONS``) are located where the damage was met.

A record whose text is empty or whitespace only is a valid Document: dropping it (``empty_text``) is the
stage's decision, not a quarantine. An oversized record keeps only a prefix of ``oversized_prefix_bytes``
in the quarantine, with its original size in ``raw_bytes``.

JSON lines rules:

* Records are the newline-separated lines, numbered from 1 in locations ``<path>:<line>``. A final line
  without a newline is a record too. A line of only whitespace is *not* a record and is skipped silently
  (but still numbered). A line longer than ``max_doc_bytes`` is ``too_large`` whatever it contains; it is not
  decoded and no more than ``max_doc_bytes`` of it are held in memory.
* At a damaged region the partial line in progress is kept as the raw of its entry, which takes that line's
  number. When reading resumes, numbering goes on from there (lines lost in the damage are not counted), and
  a first line that starts inside the lost data is quarantined like any malformed line. A plain file whose
  last line was cut off cannot be told from a malformed one: it is ``invalid_json``.

Fields of JSON lines and Parquet records: the text is ``spec.text_key`` (absent or null: ``missing_text``;
not a string: ``non_string_text``). The id is ``spec.id_key`` when it is a non-empty string or an integer,
else ``<source>/<file name without suffixes>/<line or row<N>>`` (any unusable id value is kept as
``metadata["raw_id"]``). ``url`` is taken when it is a string. ``metadata`` is the record's ``metadata``
object (anything else goes under ``metadata["raw_metadata"]``), plus every other top-level field that does
not clash with a key already there. Parquet rows are located as ``<path>:row<N>``, counted from 0. WARC/WET
files are read by ``lmhpc.data.warc``.
"""

from __future__ import annotations

import base64
import codecs
import datetime
import decimal
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lmhpc.data.documents import Document
from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.resync import CORRUPT, TRUNCATED, UNREADABLE_FILE, Damage, decode_events
from lmhpc.data.writers import compression_for

INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_TEXT = "missing_text"
NON_STRING_TEXT = "non_string_text"
TOO_LARGE = "too_large"
INVALID_RECORD = "invalid_record"
WARC_NO_HTML = "warc_no_html"
HTML_EXTRACTION_FAILED = "html_extraction_failed"

REASONS = (
    INVALID_JSON,
    INVALID_UTF8,
    MISSING_TEXT,
    NON_STRING_TEXT,
    TOO_LARGE,
    CORRUPT,
    TRUNCATED,
    UNREADABLE_FILE,
    INVALID_RECORD,
    WARC_NO_HTML,
    HTML_EXTRACTION_FAILED,
)
FILE_REASONS = frozenset({CORRUPT, TRUNCATED, UNREADABLE_FILE})  # damage to a file, not one record

FORMAT_SUFFIXES = {
    "jsonl": (".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst"),
    "parquet": (".parquet",),
    "warc": (".warc", ".warc.gz", ".wet", ".wet.gz"),
}
_ALL_SUFFIXES = sorted((s for group in FORMAT_SUFFIXES.values() for s in group), key=len, reverse=True)
_PARQUET_BATCH = 256
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


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
    ``default_source``, else the name of the file's folder. A file of unknown format is quarantined as
    ``unreadable_file`` with the reason; nothing raises.
    """
    path = Path(path)
    ctx = InputFile(path, spec, quarantine, max_doc_bytes, default_source)
    try:
        fmt = detect_format(path) if spec.format == "auto" else spec.format
    except ValueError as exc:
        ctx.add(UNREADABLE_FILE, str(path), detail=str(exc))
        return iter(())
    if fmt == "jsonl":
        return _read_jsonl(ctx)
    if fmt == "parquet":
        return _read_parquet(ctx)
    if fmt == "warc":
        from lmhpc.data.warc import read_warc

        return read_warc(ctx)
    ctx.add(UNREADABLE_FILE, str(path), detail=f"unknown input format {fmt!r}")
    return iter(())


@dataclass
class InputFile:
    """One input file being read: where bad records go and how documents are named."""

    path: Path
    spec: InputSpec
    quarantine: Quarantine
    max_doc_bytes: int
    default_source: str | None

    @property
    def stem(self) -> str:
        """The file name without its format suffixes."""
        name = self.path.name
        for suffix in _ALL_SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return self.path.stem

    @property
    def oversized_prefix(self) -> int:
        """Bytes of an oversized record that its quarantine entry keeps."""
        return min(self.quarantine.keep_raw_bytes, self.quarantine.oversized_prefix_bytes)

    def source(self, own: object = None) -> str:
        """The documents' source: the spec's, the record's own, the default, or the folder name."""
        if self.spec.source:
            return self.spec.source
        if isinstance(own, str) and own:
            return own
        if self.default_source:
            return self.default_source
        return self.path.parent.name or self.path.resolve().parent.name

    def add(self, reason: str, location: str, raw: bytes | str | None = None, detail: str = "", **kw: Any) -> None:
        """Quarantine one record (see ``Quarantine.add``)."""
        self.quarantine.add(reason, location, raw, detail, **kw)


def error_text(exc: BaseException) -> str:
    """An exception as ``Type: message`` for a quarantine entry."""
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------------- records


def _record_to_document(ctx: InputFile, record: dict[str, Any], label: str) -> Document | tuple[str, str]:
    """Build a Document from a decoded record, or return ``(reason, detail)`` for the quarantine."""
    key = ctx.spec.text_key
    text = record.get(key)
    if text is None:
        return MISSING_TEXT, f"no {key!r} field" if key not in record else f"{key!r} is null"
    if not isinstance(text, str):
        return NON_STRING_TEXT, f"{key!r} is {type(text).__name__}, not a string"
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
        self._parts: list[bytes] = []
        self._kept = 0
        self._size = 0

    def feed(self, chunk: bytes) -> Iterator[_Line]:
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            self._append(piece)
            yield self._take()
        self._append(pieces[-1])

    def finish(self) -> Iterator[_Line]:
        if self._size:
            yield self._take()

    def cut(self) -> tuple[bytes, int]:
        """End the line in progress where damage cut it: its held bytes and its size so far."""
        line = self._take()
        return line.data, line.size

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


def _read_jsonl(ctx: InputFile) -> Iterator[Document]:
    lines = _LineSplitter(ctx.max_doc_bytes, ctx.oversized_prefix)
    for event in decode_events(ctx.path, compression_for(ctx.path)):
        if isinstance(event, Damage):
            _jsonl_damage(ctx, lines, event)
            continue
        for line in lines.feed(event):
            doc = _jsonl_line(ctx, line)
            if doc is not None:
                yield doc
    for line in lines.finish():
        doc = _jsonl_line(ctx, line)
        if doc is not None:
            yield doc


def _jsonl_damage(ctx: InputFile, lines: _LineSplitter, damage: Damage) -> None:
    """One entry for a damaged region, holding the partial line it cut off; that line's number is used up."""
    complete = lines.line_no
    raw, size = lines.cut()
    detail = f"{damage.describe()} (after {complete} complete lines)"
    ctx.add(damage.reason, f"{ctx.path}:{complete + 1}", raw, detail, raw_size=size,
            fields={"offset": damage.offset, "skipped_bytes": damage.size})


def _jsonl_line(ctx: InputFile, line: _Line) -> Document | None:
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
        ctx.add(INVALID_JSON, loc, line.data, error_text(exc))
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


def _read_parquet(ctx: InputFile) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    errors = (pa.ArrowException, OSError, ValueError, EOFError)
    try:
        pf = pq.ParquetFile(ctx.path)
        batches = pf.iter_batches(batch_size=_PARQUET_BATCH)
    except errors as exc:
        ctx.add(UNREADABLE_FILE, str(ctx.path), detail=error_text(exc))
        return
    row = 0
    try:
        while True:
            try:
                rows = next(batches).to_pylist()
            except StopIteration:
                return
            except errors as exc:
                ctx.add(UNREADABLE_FILE, f"{ctx.path}:row{row}", detail=f"{error_text(exc)} (after {row} rows)")
                return
            for record in rows:
                doc = _parquet_row(ctx, record, row)
                row += 1
                if doc is not None:
                    yield doc
    finally:
        pf.close()


def _parquet_row(ctx: InputFile, record: dict[str, Any], row: int) -> Document | None:
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
    long = isinstance(text, str) and len(text) > ctx.max_doc_bytes // 4  # a character is at most 4 bytes
    size = len(text.encode("utf-8", "surrogatepass")) if long and isinstance(text, str) else 0
    if size > ctx.max_doc_bytes:
        assert isinstance(text, str)
        detail = f"text of {size} bytes ({len(text)} characters) exceeds max_doc_bytes={ctx.max_doc_bytes}"
        prefix = text[: ctx.oversized_prefix].encode("utf-8", "surrogatepass")[: ctx.oversized_prefix]
        ctx.add(TOO_LARGE, loc, prefix, detail, raw_size=size)
        return None
    result = _record_to_document(ctx, clean, f"row{row}")
    if isinstance(result, Document):
        return result
    ctx.add(result[0], loc, json.dumps(clean, ensure_ascii=False), result[1])
    return None
