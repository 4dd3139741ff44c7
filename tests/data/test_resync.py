"""Damaged compressed input: reading resumes at the next gzip member or zstd frame after a corrupt one, the
damaged region is one quarantine entry (``corrupt``, with its offset and size), and a stream that merely ends
inside a member is ``truncated``."""

from __future__ import annotations

import functools
import gzip
import io
import json
import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from lmhpc.data.documents import Document
from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import Quarantine, read_quarantine
from lmhpc.data.readers import CORRUPT, FILE_REASONS, TRUNCATED, UNREADABLE_FILE, read_documents


def read_all(path: Path) -> tuple[list[Document], list[dict[str, Any]]]:
    qpath = path.parent / f"{path.name}.quarantine.jsonl"
    with Quarantine(qpath) as q:
        docs = list(read_documents(path, InputSpec(), q))
    return docs, list(read_quarantine(qpath))


def gzip_members(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every gzip member of a well-formed multi-member file."""
    spans, pos = [], 0
    while pos < len(data):
        d = zlib.decompressobj(wbits=31)
        d.decompress(data[pos:])
        end = len(data) - len(d.unused_data)
        spans.append((pos, end))
        pos = end
    return spans


def corrupt(data: bytes, start: int, end: int) -> bytes:
    """Flip the bytes in the middle of data[start:end] (the header and trailer left as they are)."""
    mid = (start + end) // 2
    damaged = bytearray(data)
    for i in range(mid - 8, mid + 8):
        damaged[i] ^= 0x5A
    return bytes(damaged)


def html(title: str) -> bytes:
    return (f"<!doctype html><html><head><title>{title}</title></head><body><main><article><h1>{title}</h1>"
            f"<p>The article called {title} explains in many plain words how the pieces fit together "
            "and why the order of the steps matters to the reader.</p></article></main></body></html>").encode()


def write_warc_gz(path: Path, pages: list[str]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)  # one gzip member per record
        for name in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"https://ex.org/{name}", "response",
                                                          payload=io.BytesIO(html(name)), http_headers=http))


def test_corrupt_warc_member_skips_one_record_and_reads_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "web" / "crawl.warc.gz"
    path.parent.mkdir()
    write_warc_gz(path, ["a", "b", "c", "d", "e"])
    data = path.read_bytes()
    members = gzip_members(data)
    assert len(members) == 5
    start, end = members[2]
    path.write_bytes(corrupt(data, start, end))
    docs, entries = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/a", "https://ex.org/b", "https://ex.org/d", "https://ex.org/e"]
    (entry,) = entries
    assert entry["reason"] == CORRUPT
    assert entry["offset"] == start and entry["skipped_bytes"] == end - start
    assert f"{path}:record2@" in entry["location"]


def test_two_corrupt_warc_members_are_two_entries(tmp_path: Path) -> None:
    path = tmp_path / "web" / "crawl.warc.gz"
    path.parent.mkdir()
    write_warc_gz(path, ["a", "b", "c", "d", "e"])
    data = path.read_bytes()
    members = gzip_members(data)
    data = corrupt(corrupt(data, *members[0]), *members[3])
    path.write_bytes(data)
    docs, entries = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/b", "https://ex.org/c", "https://ex.org/e"]
    assert [(e["reason"], e["offset"]) for e in entries] == [(CORRUPT, members[0][0]), (CORRUPT, members[3][0])]


def test_warc_cut_inside_the_last_member_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "web" / "crawl.warc.gz"
    path.parent.mkdir()
    write_warc_gz(path, ["a", "b", "c"])
    data = path.read_bytes()
    start, end = gzip_members(data)[2]
    path.write_bytes(data[: (start + end) // 2])
    docs, entries = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/a", "https://ex.org/b"]
    (entry,) = entries
    assert entry["reason"] == TRUNCATED and entry["offset"] == start


def lines(first: int, n: int) -> bytes:
    return b"".join(json.dumps({"id": f"r{i}", "text": f"record {i}"}).encode() + b"\n"
                    for i in range(first, first + n))


@pytest.mark.parametrize("codec", ["gz", "zst"])
def test_corrupt_member_of_jsonl_resumes_at_the_next_one(tmp_path: Path, codec: str) -> None:
    if codec == "gz":
        parts = [gzip.compress(lines(i * 100, 100), mtime=0) for i in range(3)]
    else:
        cctx = zstandard.ZstdCompressor(write_checksum=True)
        parts = [cctx.compress(lines(i * 100, 100)) for i in range(3)]
    data = b"".join(parts)
    start, end = len(parts[0]), len(parts[0]) + len(parts[1])
    path = tmp_path / f"m.jsonl.{codec}"
    path.write_bytes(corrupt(data, start, end))
    docs, entries = read_all(path)
    damage = [e for e in entries if e["reason"] in FILE_REASONS]
    assert [(e["reason"], e["offset"], e["skipped_bytes"]) for e in damage] == [(CORRUPT, start, end - start)]
    ids = {d.id for d in docs}
    assert {f"r{i}" for i in range(200, 300)} <= ids, "every record after the damage is read"
    assert {f"r{i}" for i in range(100)} <= ids
    assert not ids & {f"r{i}" for i in range(150, 200)}


def test_jsonl_member_split_inside_a_line_quarantines_the_fragment(tmp_path: Path) -> None:
    raw = lines(0, 30)
    cut = raw.index(b"\n", len(raw) // 3) + 5  # the second member starts in the middle of a line
    cut2 = raw.index(b"\n", 2 * len(raw) // 3) + 7
    parts = [gzip.compress(p, mtime=0) for p in (raw[:cut], raw[cut:cut2], raw[cut2:])]
    data = corrupt(b"".join(parts), len(parts[0]), len(parts[0]) + len(parts[1]))
    path = tmp_path / "split.jsonl.gz"
    path.write_bytes(data)
    docs, entries = read_all(path)
    assert [e["reason"] for e in entries] == [CORRUPT, "invalid_json"]
    after = raw[cut2:].split(b"\n", 1)[1]
    assert [d.id for d in docs][-after.count(b"\n"):] == [json.loads(x)["id"] for x in after.splitlines()]


def test_corrupt_single_member_is_corrupt_not_truncated(tmp_path: Path) -> None:
    data = gzip.compress(lines(0, 5000), mtime=0)
    path = tmp_path / "one.jsonl.gz"
    path.write_bytes(corrupt(data, 0, len(data)))
    docs, entries = read_all(path)
    assert 0 < len(docs) < 5000
    assert [e["reason"] for e in entries if e["reason"] in FILE_REASONS] == [CORRUPT]


def test_trailing_garbage_is_corrupt_and_zero_padding_is_ignored(tmp_path: Path) -> None:
    good = gzip.compress(lines(0, 3), mtime=0)
    (tmp_path / "pad.jsonl.gz").write_bytes(good + b"\x00" * 512)
    (tmp_path / "junk.jsonl.gz").write_bytes(good + b"not a member at all")
    docs, entries = read_all(tmp_path / "pad.jsonl.gz")
    assert len(docs) == 3 and entries == []
    docs, entries = read_all(tmp_path / "junk.jsonl.gz")
    assert len(docs) == 3
    assert [(e["reason"], e["offset"], e["skipped_bytes"]) for e in entries] == [(CORRUPT, len(good), 19)]


def test_garbage_before_a_good_member_is_corrupt_then_read(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl.gz"
    path.write_bytes(b"leading junk " * 10 + gzip.compress(lines(0, 4), mtime=0))
    docs, entries = read_all(path)
    assert len(docs) == 4 and [e["reason"] for e in entries] == [CORRUPT]


def test_nothing_decodable_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl.zst"
    path.write_bytes(b"plain text, no zstd frame anywhere\n")
    docs, entries = read_all(path)
    assert docs == [] and [e["reason"] for e in entries] == [UNREADABLE_FILE]


def test_resync_after_a_member_larger_than_the_read_window(tmp_path: Path) -> None:
    import random

    rng = random.Random(0)
    big = b"".join(json.dumps({"id": f"b{i}", "text": f"{rng.getrandbits(1024):0256x}"}).encode() + b"\n"
                   for i in range(16_000))
    first, second = gzip.compress(big, mtime=0), gzip.compress(lines(0, 50), mtime=0)
    assert len(first) > 2 * 2**20  # more than the window kept behind the decoder
    path = tmp_path / "big.jsonl.gz"
    path.write_bytes(corrupt(first + second, 0, len(first)))
    docs, entries = read_all(path)
    damage = [e for e in entries if e["reason"] in FILE_REASONS]
    assert [(e["reason"], e["offset"], e["skipped_bytes"]) for e in damage] == [(CORRUPT, 0, len(first))]
    assert [d.id for d in docs][-50:] == [f"r{i}" for i in range(50)]
    assert docs[0].id == "b0"


@settings(max_examples=60, deadline=None, database=None)
@given(st.integers(3, 5), st.data(), st.booleans())
def test_damage_anywhere_in_one_member_spares_the_others(members: int, data: st.DataObject, zst: bool) -> None:
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    parts = [cctx.compress(lines(m * 100, 40)) if zst else gzip.compress(lines(m * 100, 40), mtime=0)
             for m in range(members)]
    k = data.draw(st.integers(0, members - 1))
    start = sum(len(p) for p in parts[:k])
    a = data.draw(st.integers(start, start + len(parts[k]) - 1))
    b = data.draw(st.integers(a + 1, start + len(parts[k])))
    noise = data.draw(st.binary(min_size=b - a, max_size=b - a))
    blob = b"".join(parts)
    damaged = blob[:a] + noise + blob[b:]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.jsonl.{'zst' if zst else 'gz'}"
        path.write_bytes(damaged)
        docs, entries = read_all(path)
    ids = {d.id for d in docs}
    for m in range(members):
        if m != k:
            assert {f"r{i}" for i in range(m * 100, m * 100 + 40)} <= ids, f"member {m} lost (damage in {k})"
    if damaged != blob:
        assert [e["reason"] for e in entries if e["reason"] in FILE_REASONS] in ([], [CORRUPT], [TRUNCATED])


@functools.cache
def four_record_warc() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "crawl.warc.gz"
        write_warc_gz(path, ["a", "b", "c", "d"])  # record ids and dates differ from one call to the next
        return path.read_bytes()


@settings(max_examples=40, deadline=None, database=None)
@given(st.data())
def test_warc_damage_anywhere_in_one_record_spares_the_others(data: st.DataObject) -> None:
    blob = four_record_warc()
    members = gzip_members(blob)
    k = data.draw(st.integers(0, len(members) - 1))
    a = data.draw(st.integers(members[k][0], members[k][1] - 1))
    b = data.draw(st.integers(a + 1, members[k][1]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "web" / "crawl.warc.gz"
        path.parent.mkdir()
        path.write_bytes(blob[:a] + data.draw(st.binary(min_size=b - a, max_size=b - a)) + blob[b:])
        docs, _ = read_all(path)
    urls = {d.url for d in docs}
    assert {f"https://ex.org/{n}" for i, n in enumerate("abcd") if i != k} <= urls
