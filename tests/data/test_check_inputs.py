"""check_inputs: every matched file that cannot be read as input is named before anything is submitted."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pytest
import zstandard

from lmhpc.data.check import check_file, check_inputs
from lmhpc.data.inputs import InputSpec


def problems(tmp_path: Path, *specs: InputSpec) -> list[str]:
    return check_inputs(list(specs), lambda p: tmp_path / p, "curate.inputs")


def good_warc() -> bytes:
    from warcio.warcwriter import WARCWriter

    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True)
    writer.write_record(writer.create_warc_record("https://ex.org/", "conversion", payload=io.BytesIO(b"text"),
                                                  warc_content_type="text/plain"))
    return buf.getvalue()


def test_good_inputs_have_no_problems(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.jsonl").write_bytes(b'\xef\xbb\xbf\n  {"text": "x"}\n')
    (data / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "y"}\n'))
    (data / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "z"}\n'))
    (data / "empty.jsonl").write_bytes(b"")
    (data / "sub.jsonl").mkdir()  # a folder is not an input, as in the stage
    pq.write_table(pa.table({"text": ["p"]}), data / "d.parquet")
    (data / "e.warc.gz").write_bytes(good_warc())
    (data / "f.txt").write_bytes(b'{"text": "named freely, format given"}\n')
    assert problems(tmp_path, InputSpec(path="in/*.*[!t]"), InputSpec(path="in/f.txt", format="jsonl")) == []
    assert check_file(data / "a.jsonl") is None


def test_every_bad_file_is_named_with_its_spec_key(tmp_path: Path) -> None:
    data = tmp_path / "in"
    data.mkdir()
    (data / "good.jsonl").write_bytes(b'{"text": "x"}\n')
    (data / "README.md").write_text("# About this corpus\n")
    (data / "fake.jsonl.gz").write_bytes(b'{"text": "not compressed"}\n')
    (data / "packed.jsonl").write_bytes(gzip.compress(b'{"text": "compressed"}\n'))
    (data / "notes.jsonl").write_bytes(b"These are notes, not JSON lines.\n")
    (data / "bad.parquet").write_bytes(b"PAR1 not really")
    (data / "page.warc").write_bytes(b"<html>not a WARC</html>")
    os.symlink(data / "gone.jsonl", data / "link.jsonl")
    found = problems(tmp_path, InputSpec(path="in/*"), InputSpec(path="nowhere/*.jsonl"))
    assert len(found) == 8, found
    by_name = {Path(p.split(": ")[1]).name: p for p in found[:7]}
    assert all(p.startswith("curate.inputs[0].path: ") for p in found[:7])
    assert "unknown format" in by_name["README.md"]
    assert "not gzip" in by_name["fake.jsonl.gz"]
    assert "gzip-compressed" in by_name["packed.jsonl"]
    assert "JSON lines" in by_name["notes.jsonl"]
    assert "Parquet" in by_name["bad.parquet"]
    assert "WARC" in by_name["page.warc"]
    assert "cannot be read" in by_name["link.jsonl"]
    assert found[7].startswith("curate.inputs[1].path: no file matches ") and "nowhere" in found[7]
    assert "good.jsonl" not in "".join(found)


def test_explicit_format_is_checked_against_the_content(tmp_path: Path) -> None:
    (tmp_path / "x.data").write_bytes(b"WARC/1.0\r\n")
    found = problems(tmp_path, InputSpec(path="x.data", format="jsonl"))
    assert len(found) == 1 and "x.data" in found[0] and "JSON lines" in found[0]
    assert problems(tmp_path, InputSpec(path="x.data", format="warc")) == []
