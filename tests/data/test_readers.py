"""read_documents on JSON lines, Parquet and WARC inputs, good and bad."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

import pytest
import zstandard

from lmhpc.data.documents import Document
from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import OVERSIZED_PREFIX_BYTES, Quarantine, decode_raw, read_quarantine
from lmhpc.data.readers import FILE_REASONS, REASONS, detect_format, read_documents


def read_all(
    path: Path, spec: InputSpec | None = None, keep_raw_bytes: int = 64 * 2**20, **kwargs: Any
) -> tuple[list[Document], list[dict[str, Any]], Quarantine]:
    qpath = path.parent / f"{path.name}.quarantine.jsonl"
    q = Quarantine(qpath, keep_raw_bytes=keep_raw_bytes)
    docs = list(read_documents(path, spec or InputSpec(), q, **kwargs))
    q.close()
    entries = list(read_quarantine(qpath))
    assert q.total == len(entries)
    assert set(q.counts) <= set(REASONS)
    return docs, entries, q


def by_location(entries: list[dict[str, Any]]) -> dict[str, str]:
    return {e["location"].rsplit(":", 1)[1]: e["reason"] for e in entries}


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("a.jsonl", "jsonl"), ("a.json", "jsonl"), ("a.jsonl.gz", "jsonl"), ("a.JSONL.ZST", "jsonl"),
        ("a.json.gz", "jsonl"), ("a.json.zst", "jsonl"), ("a.parquet", "parquet"), ("a.warc", "warc"),
        ("a.warc.gz", "warc"), ("a.wet", "warc"), ("a.wet.gz", "warc"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(Path("/x") / name) == fmt


@pytest.mark.parametrize("name", ["a.txt", "a.csv.gz", "a.zst", "jsonl"])
def test_detect_format_rejects_unknown(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format(Path(name))
    (tmp_path / name).write_bytes(b"# not data\n")
    docs, entries, _ = read_all(tmp_path / name)
    (entry,) = entries
    assert docs == [] and entry["reason"] == "unreadable_file" and "cannot tell the format" in entry["detail"]
    assert entry["location"] == str(tmp_path / name)


# ---------------------------------------------------------------------------------------------- JSON lines

MIXED_LINES = [
    b'{"id": "a", "text": "first good"}',  # 1
    b'{"text": "broken',  # 2 invalid_json
    b'{"text": "caf\xe9"}',  # 3 invalid_utf8
    b'{"title": "no text"}',  # 4 missing_text
    b'{"text": 42}',  # 5 non_string_text
    b'{"text": ""}',  # 6 empty text: a document (the stage drops it)
    b'{"text": " \\n\\t "}',  # 7 whitespace only: a document too
    b'["text", "a list"]',  # 8 invalid_record
    b"   ",  # 9 blank: not a record
    b'{"text": null}',  # 10 missing_text
    b'{"text": "nan", "score": NaN}',  # 11 invalid_json (non-standard constant)
    b'{"text": "lone \\ud800 surrogate"}',  # 12 invalid_utf8
    b'{"text": "emoji \\ud83d\\ude00 pair"}',  # 13 good
    b"",  # 14 blank
    b'{"id": 7, "text": "last good, no newline"}',  # 15 good, unterminated
]


def test_jsonl_good_records_around_bad_ones(tmp_path: Path) -> None:
    path = tmp_path / "col" / "mixed.jsonl"
    path.parent.mkdir()
    path.write_bytes(b"\n".join(MIXED_LINES))
    docs, entries, q = read_all(path)
    assert [d.text for d in docs] == ["first good", "", " \n\t ", "emoji \U0001f600 pair", "last good, no newline"]
    assert by_location(entries) == {
        "2": "invalid_json", "3": "invalid_utf8", "4": "missing_text", "5": "non_string_text",
        "8": "invalid_record", "10": "missing_text", "11": "invalid_json", "12": "invalid_utf8",
    }
    records = sum(1 for line in MIXED_LINES if line.strip())
    assert len(docs) + q.total == records == 13
    assert all(e["location"].startswith(f"{path}:") for e in entries)
    raw3 = next(e for e in entries if e["location"].endswith(":3"))
    assert decode_raw(raw3) == MIXED_LINES[2]
    assert docs[4].id == "7"
    assert docs[3].id == "col/mixed/13", "generated ids are <source>/<stem>/<line>"


def test_jsonl_field_rules(tmp_path: Path) -> None:
    path = tmp_path / "folder" / "f.jsonl.gz"
    path.parent.mkdir()
    rows = [
        {"doc_id": "x1", "content": "hello", "url": "https://a", "source": "own", "metadata": {"lang": "en"}, "k": 1},
        {"content": "world", "metadata": "not a dict", "text": "other field"},
        {"doc_id": ["odd"], "content": "third", "url": 5, "source": 3},
    ]
    path.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
    spec = InputSpec(text_key="content", id_key="doc_id")
    docs, entries, _ = read_all(path, spec)
    assert entries == []
    a, b, c = docs
    assert (a.id, a.text, a.source, a.url, a.metadata) == ("x1", "hello", "own", "https://a", {"lang": "en", "k": 1})
    assert (b.id, b.source, b.url) == ("folder/f/2", "folder", None)
    assert b.metadata == {"raw_metadata": "not a dict", "text": "other field"}
    assert c.id == "folder/f/3" and c.url is None
    assert c.metadata == {"raw_source": 3, "raw_url": 5, "raw_id": ["odd"]}
    docs, _, _ = read_all(path, InputSpec(source="fixed", text_key="content", id_key="doc_id"))
    assert {d.source for d in docs} == {"fixed"}
    docs, _, _ = read_all(path, spec, default_source="fallback")
    assert [d.source for d in docs] == ["own", "fallback", "fallback"]


def test_jsonl_ids_are_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "a"}\n{"text": "b"}\n'))
    first = [d.id for d in read_all(path)[0]]
    assert first == [d.id for d in read_all(path)[0]] == [f"{tmp_path.name}/d/1", f"{tmp_path.name}/d/2"]


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\r\n{"text": "two"}\r\n')
    docs, entries, _ = read_all(path)
    assert [d.text for d in docs] == ["one", "two"] and entries == []


def test_deeply_nested_json_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"text": "x", "m": ' + b"[" * 200_000 + b"]" * 200_000 + b'}\n{"text": "ok"}\n')
    docs, entries, _ = read_all(path)
    assert [d.text for d in docs] == ["ok"]
    assert by_location(entries) == {"1": "invalid_json"}


def test_huge_line_is_too_large_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    huge = b'{"text": "' + b"x" * (50 * 2**20) + b'"}'
    path.write_bytes(b'{"text": "before"}\n' + huge + b'\n{"text": "after"}\n')
    docs, entries, q = read_all(path, max_doc_bytes=2**20, keep_raw_bytes=4096)
    assert [d.text for d in docs] == ["before", "after"]
    (entry,) = entries
    assert entry["reason"] == "too_large" and entry["location"] == f"{path}:2"
    assert entry["raw_bytes"] == len(huge) and entry["raw_truncated"]
    assert decode_raw(entry) == huge[:4096]
    assert len(docs) + q.total == 3


def test_too_large_keeps_a_capped_prefix_and_the_size(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "y" * 50_000}).encode()
    path.write_bytes(line)
    _, (entry,), _ = read_all(path, max_doc_bytes=1000)
    assert entry["reason"] == "too_large" and entry["raw_truncated"] and entry["raw_bytes"] == len(line)
    assert decode_raw(entry) == line[:OVERSIZED_PREFIX_BYTES]


def _lines(n: int) -> bytes:
    return b"".join(json.dumps({"id": f"r{i}", "text": f"record {i} " * 5}).encode() + b"\n" for i in range(n))


@pytest.mark.parametrize("kind", ["gz", "zst"])
def test_truncated_compressed_file(tmp_path: Path, kind: str) -> None:
    data = _lines(20_000)
    if kind == "gz":
        packed = gzip.compress(data)
    else:
        packed = zstandard.ZstdCompressor(level=3).compress(data)
    cut = packed[: len(packed) // 2]
    if kind == "gz":
        prefix = zlib.decompressobj(wbits=31).decompress(cut)
    else:
        prefix = zstandard.ZstdDecompressor().decompressobj().decompress(cut)
    complete = prefix.count(b"\n")
    assert 0 < complete < 20_000
    path = tmp_path / f"t.jsonl.{kind}"
    path.write_bytes(cut)
    docs, entries, _ = read_all(path)
    assert [d.id for d in docs] == [f"r{i}" for i in range(complete)]
    (entry,) = entries
    assert entry["reason"] == "truncated"
    assert entry["location"] == f"{path}:{complete + 1}"
    assert decode_raw(entry) == prefix[prefix.rfind(b"\n") + 1 :]


def test_corrupt_single_member_gzip_is_one_corrupt_entry(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(_lines(5000)))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = b"\x00" * 64
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(bytes(packed))
    docs, entries, _ = read_all(path)
    assert len(docs) < 5000
    assert [e["reason"] for e in entries if e["reason"] in FILE_REASONS] == ["corrupt"]


def test_multi_frame_zst_and_multi_member_gz(tmp_path: Path) -> None:
    cctx = zstandard.ZstdCompressor()
    (tmp_path / "m.jsonl.zst").write_bytes(cctx.compress(_lines(3)) + cctx.compress(_lines(2)))
    (tmp_path / "m.jsonl.gz").write_bytes(gzip.compress(_lines(3)) + gzip.compress(_lines(2)))
    for name in ("m.jsonl.zst", "m.jsonl.gz"):
        docs, entries, _ = read_all(tmp_path / name)
        assert [d.id for d in docs] == ["r0", "r1", "r2", "r0", "r1"] and entries == []


@pytest.mark.parametrize("name,content", [("fake.jsonl.gz", b'{"text": "plain"}\n'), ("fake.jsonl.zst", b"nope\n")])
def test_not_actually_compressed_is_unreadable(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    docs, entries, _ = read_all(path)
    assert docs == [] and [e["reason"] for e in entries] == ["unreadable_file"]


def test_directory_and_missing_file_are_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    for name in ("dir.jsonl", "missing.jsonl.gz"):
        q = Quarantine(tmp_path / "q.jsonl")
        assert list(read_documents(tmp_path / name, InputSpec(), q)) == []
        assert q.counts == {"unreadable_file": 1}
        q.close()


def test_empty_files_have_no_records(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b""))
    (tmp_path / "e.jsonl.zst").write_bytes(b"")
    for name in ("e.jsonl", "e.jsonl.gz", "e.jsonl.zst"):
        docs, entries, _ = read_all(tmp_path / name)
        assert docs == [] and entries == []


# ---------------------------------------------------------------------------------------------- Parquet


def test_parquet_good_and_bad_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "id": ["p0", None, "p2", "p3", "p4", "p5"],
            "text": ["good zero", None, "", "   ", "good four", "x" * 3000],
            "lang": ["en", "de", "fr", "it", "es", "nl"],
            "blob": [b"\xff\x00", b"ok", None, None, None, None],
            "metadata": [{"q": 1.5}, None, None, None, {"q": float("nan")}, None],
        }
    )
    path = tmp_path / "src" / "t.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, row_group_size=2)
    docs, entries, q = read_all(path, max_doc_bytes=1000)
    assert [d.id for d in docs] == ["p0", "p2", "p3", "p4"]
    assert docs[0].metadata == {"q": 1.5, "lang": "en", "blob": {"base64": "/wA="}}
    assert docs[3].metadata == {"q": None, "lang": "es", "blob": None}
    assert docs[0].source == "src" and [d.text for d in docs[1:3]] == ["", "   "]
    assert by_location(entries) == {"row1": "missing_text", "row5": "too_large"}
    assert entries[1]["raw_bytes"] == 3000
    assert len(docs) + q.total == 6
    assert json.loads(decode_raw(entries[0]) or b"")["lang"] == "de"


def test_parquet_non_string_and_missing_text_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    pq.write_table(pa.table({"body": ["a", "b"], "text_bytes": [b"x", b"y"]}), tmp_path / "m.parquet")
    pq.write_table(pa.table({"text": [b"bytes are text", b"\xff"]}), tmp_path / "b.parquet")
    _, entries, _ = read_all(tmp_path / "n.parquet")
    assert [e["reason"] for e in entries] == ["non_string_text"] * 2
    _, entries, _ = read_all(tmp_path / "m.parquet")
    assert [e["reason"] for e in entries] == ["missing_text"] * 2
    docs, entries, _ = read_all(tmp_path / "b.parquet")
    assert [d.text for d in docs] == ["bytes are text"] and by_location(entries) == {"row1": "invalid_utf8"}


def test_corrupt_parquet_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    docs, entries, _ = read_all(path)
    assert docs == [] and [e["reason"] for e in entries] == ["unreadable_file"]


# ---------------------------------------------------------------------------------------------- WARC


def _html(body: str, title: str = "Page") -> str:
    return (
        f"<!doctype html><html><head><title>{title}</title></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
        f"<main><article><h1>{title}</h1><p>{body}</p></article></main>"
        "<footer>Copyright footer</footer></body></html>"
    )


def write_warc(path: Path, gz: bool) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=gz)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "tests"}))

        def response(uri: str, payload: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            w.write_record(
                w.create_warc_record(uri, "response", payload=io.BytesIO(payload), http_headers=http,
                                     warc_headers_dict=extra or {})
            )

        lic = {"WARC-Lmhpc-License": "CC-BY-4.0", "WARC-Lmhpc-Package": "docs-site"}
        body = "The main article text explains how sharded pretraining data is prepared step by step."
        response("https://ex.org/a", _html(body, "Alpha").encode(), "text/html; charset=utf-8", lic)
        request = io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")
        w.write_record(w.create_warc_record("https://ex.org/a", "request", payload=request))
        latin = "Ein Artikel über Käse und Brötchen, der lang genug ist, um als Haupttext zu gelten."
        response("https://ex.org/b", _html(latin, "Beta").encode("latin-1"), "text/html; charset=ISO-8859-1")
        response("https://ex.org/logo.png", b"\x89PNG\r\n\x1a\n", "image/png")
        response("https://ex.org/empty", b"<html><body></body></html>", "text/html")
        response("https://ex.org/c", _html("Bogus charset page with enough words to be the main text.").encode(),
                 "text/html; charset=x-no-such-charset")


@pytest.mark.parametrize("name", ["crawl.warc", "crawl.warc.gz"])
def test_warc_html_responses(tmp_path: Path, name: str) -> None:
    path = tmp_path / "web" / name
    path.parent.mkdir()
    write_warc(path, gz=name.endswith(".gz"))
    docs, entries, _ = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/a", "https://ex.org/b", "https://ex.org/empty", "https://ex.org/c"]
    a, b, empty, c = docs
    assert not empty.text.strip()
    assert "main article text explains" in a.text
    assert "Copyright footer" not in a.text and "About" not in a.text
    assert a.id.startswith("<urn:uuid:") and a.source == "web"
    assert a.metadata == {"content_type": "text/html", "charset": "utf-8", "license": "CC-BY-4.0",
                          "package": "docs-site"}
    assert "über Käse und Brötchen" in b.text and b.metadata["charset"] == "iso-8859-1"
    assert c.metadata["charset_fallback"] and c.metadata["declared_charset"] == "x-no-such-charset"
    assert [e["reason"] for e in entries] == ["warc_no_html"]
    assert all(":record" in e["location"] and "@" in e["location"] for e in entries)
    assert entries[0]["location"].startswith(f"{path}:record4@")


def test_truncated_warc_gz(tmp_path: Path) -> None:
    full = tmp_path / "full.warc.gz"
    write_warc(full, gz=True)
    data = full.read_bytes()
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(data[: int(len(data) * 0.75)])
    docs, entries, _ = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/a", "https://ex.org/b"]
    assert [e["reason"] for e in entries if e["reason"] in FILE_REASONS] == ["truncated"]


def test_truncated_plain_warc(tmp_path: Path) -> None:
    full = tmp_path / "full.warc"
    write_warc(full, gz=False)
    data = full.read_bytes()
    path = tmp_path / "cut.warc"
    path.write_bytes(data[: len(data) - 40])
    docs, entries, _ = read_all(path)
    assert [d.url for d in docs] == ["https://ex.org/a", "https://ex.org/b", "https://ex.org/empty"]
    assert entries[-1]["reason"] == "invalid_record" and "truncated" in entries[-1]["detail"]


def test_not_a_warc_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "x.warc"
    path.write_bytes(b"hello, this is not a WARC file\n")
    docs, entries, _ = read_all(path)
    assert docs == [] and [e["reason"] for e in entries] == ["unreadable_file"]


def test_wet_conversion_records(tmp_path: Path) -> None:
    from warcio.warcwriter import WARCWriter

    path = tmp_path / "text" / "x.wet.gz"
    path.parent.mkdir()
    with open(path, "wb") as fh:
        w = WARCWriter(fh, gzip=True)
        w.write_record(w.create_warcinfo_record(path.name, {"software": "tests"}))
        for uri, text in (("https://ex.org/1", "Plain extracted text.\nSecond line."), ("https://ex.org/2", "  ")):
            w.write_record(w.create_warc_record(uri, "conversion", payload=io.BytesIO(text.encode()),
                                                warc_content_type="text/plain"))
    docs, entries, _ = read_all(path, InputSpec(source="cc"))
    doc, blank = docs
    assert doc.text == "Plain extracted text.\nSecond line." and doc.source == "cc"
    assert doc.url == "https://ex.org/1" and doc.metadata == {"content_type": "text/plain"}
    assert blank.text == "  " and entries == []
