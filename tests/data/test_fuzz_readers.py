"""Property tests: arbitrary and damaged input never makes read_documents raise, and every record is
accounted for exactly once (yielded, or quarantined at its own line)."""

from __future__ import annotations

import gzip
import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmhpc.data.documents import Document
from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import Quarantine, read_quarantine
from lmhpc.data.readers import FILE_REASONS, REASONS, read_documents

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX_DOC_BYTES = 120  # small, so that too_large lines occur

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "text": st.text(max_size=60) | json_values,
        "id": json_values,
        "url": json_values,
        "source": json_values,
        "metadata": json_values,
        "extra": json_values,
    },
)
good_records = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=30)},
    optional={"id": st.text(max_size=8) | st.integers(), "url": st.text(max_size=10), "lang": st.text(max_size=3)},
)
lines = st.one_of(
    good_records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    records.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    records.map(lambda r: json.dumps(r).encode()),  # \u escapes, including lone surrogates
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from([b"", b"   ", b"\t\r", b"{", b'{"text": NaN}', b"\xef\xbb\xbf{}", b'{"text":"%s"}' % (b"z" * 200)]),
)
jsonl_bytes = st.tuples(st.lists(lines, max_size=12), st.booleans()).map(
    lambda t: b"\n".join(t[0]) + (b"\n" if t[1] and t[0] else b"")
)


def expected_records(data: bytes, *, complete_only: bool = False) -> list[int]:
    """Line numbers that are records: non-blank, or longer than MAX_DOC_BYTES (a final unterminated line
    counts unless ``complete_only``)."""
    pieces = data.split(b"\n")
    last = pieces.pop()
    if last and not complete_only:
        pieces.append(last)
    return [n for n, p in enumerate(pieces, start=1) if len(p) > MAX_DOC_BYTES or p.strip()]


def run(data: bytes, suffix: str) -> tuple[list[Document], list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "src" / f"fuzz{suffix}"
        path.parent.mkdir()
        path.write_bytes(data)
        q = Quarantine(Path(tmp) / "q.jsonl")
        docs = list(read_documents(path, InputSpec(), q, max_doc_bytes=MAX_DOC_BYTES))
        q.close()
        entries = list(read_quarantine(Path(tmp) / "q.jsonl"))
    assert q.total == len(entries) and set(q.counts) <= set(REASONS)
    for doc in docs:
        assert isinstance(doc.id, str) and doc.id
        assert isinstance(doc.text, str)  # empty text is a document too: the stage drops it
        json.dumps(doc.to_dict(), ensure_ascii=False).encode("utf-8")  # writable: no lone surrogates
    return docs, entries


def record_lines(docs: list[Document], entries: list[dict[str, Any]]) -> list[int]:
    """Line numbers accounted for: yielded docs carry them in generated ids, entries in locations."""
    quarantined = [int(e["location"].rsplit(":", 1)[1]) for e in entries if e["reason"] not in FILE_REASONS]
    return sorted(quarantined + [int(d.metadata["line"]) for d in docs])


def tag_lines(data: bytes) -> bytes:
    """Give every valid record its line number in a field, so the yielded docs say where they came from."""
    out = []
    for n, line in enumerate(data.split(b"\n"), start=1):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            out.append(line)
            continue
        if isinstance(rec, dict):
            rec.pop("metadata", None)
            rec["line"] = n
            line = json.dumps(rec).encode()
        out.append(line)
    return b"\n".join(out)


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_plain(data: bytes) -> None:
    docs, entries = run(data, ".jsonl")
    assert not [e for e in entries if e["reason"] in FILE_REASONS]
    assert len(docs) + len(entries) == len(expected_records(data))


@FUZZ
@given(jsonl_bytes)
def test_structured_lines_plain(data: bytes) -> None:
    data = tag_lines(data)
    docs, entries = run(data, ".jsonl")
    assert not [e for e in entries if e["reason"] in FILE_REASONS]
    assert record_lines(docs, entries) == expected_records(data)


@FUZZ
@given(jsonl_bytes, st.booleans())
def test_compressed_round_trip(data: bytes, zst: bool) -> None:
    data = tag_lines(data)
    packed = zstandard.ZstdCompressor().compress(data) if zst else gzip.compress(data)
    docs, entries = run(packed, ".jsonl.zst" if zst else ".jsonl.gz")
    assert not [e for e in entries if e["reason"] in FILE_REASONS]
    assert record_lines(docs, entries) == expected_records(data)


@FUZZ
@given(jsonl_bytes, st.floats(min_value=0, max_value=1, exclude_max=True), st.booleans())
def test_compressed_truncated_anywhere(data: bytes, fraction: float, zst: bool) -> None:
    data = tag_lines(data)
    packed = zstandard.ZstdCompressor().compress(data) if zst else gzip.compress(data)
    cut = packed[: int(len(packed) * fraction)]
    if zst:
        prefix = zstandard.ZstdDecompressor().decompressobj().decompress(cut) if cut else b""
    else:
        prefix = zlib.decompressobj(wbits=31).decompress(cut)
    docs, entries = run(cut, ".jsonl.zst" if zst else ".jsonl.gz")
    damage = [e for e in entries if e["reason"] in FILE_REASONS]
    if not cut:
        assert damage == [] and docs == []  # a zero-byte file is an empty stream, whatever its suffix
        return
    assert len(damage) == 1
    assert record_lines(docs, entries) == expected_records(prefix, complete_only=True)


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([".jsonl.gz", ".jsonl.zst"]))
def test_arbitrary_bytes_compressed(data: bytes, suffix: str) -> None:
    docs, entries = run(data, suffix)
    assert len([e for e in entries if e["reason"] in FILE_REASONS]) <= 1


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([b"\x1f\x8b\x08\x00", b"\x28\xb5\x2f\xfd"]))
def test_arbitrary_bytes_after_magic(data: bytes, magic: bytes) -> None:
    """Garbage that starts like a gzip or zstd stream gets past the format check and into the decoder."""
    docs, entries = run(magic + data, ".jsonl.gz" if magic[0] == 0x1F else ".jsonl.zst")
    assert len([e for e in entries if e["reason"] in FILE_REASONS]) <= 1
