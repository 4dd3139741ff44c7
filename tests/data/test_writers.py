"""ShardWriter: rotation, round trips, determinism, atomic renames."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import zstandard

from lmhpc.data.documents import Document
from lmhpc.data.writers import ShardWriter, encode_line, iter_jsonl_docs


def make_docs(n: int) -> list[Document]:
    return [
        Document(
            id=f"doc-{i}",
            text=f"Dokument Nummer {i} — ünïcödé text " * (1 + i % 7),
            source="web" if i % 2 else "books",
            url=f"https://example.org/{i}" if i % 3 else None,
            metadata={"lang": "de", "i": i, "nested": {"a": [1, 2.5, None]}},
        )
        for i in range(n)
    ]


def write_all(directory: Path, docs: list[Document], **kwargs: object) -> tuple[ShardWriter, list[Path]]:
    writer = ShardWriter(directory, "part", **kwargs)  # type: ignore[arg-type]
    for doc in docs:
        writer.write(doc)
    return writer, writer.close()


@pytest.mark.parametrize("compression,suffix", [("zst", ".jsonl.zst"), ("gz", ".jsonl.gz"), ("none", ".jsonl")])
def test_round_trip_with_rotation(tmp_path: Path, compression: str, suffix: str) -> None:
    docs = make_docs(300)
    writer, paths = write_all(tmp_path, docs, max_bytes=4096, compression=compression)
    assert len(paths) > 5
    assert [p.name for p in paths] == [f"part-{i:05d}{suffix}" for i in range(len(paths))]
    assert sorted(tmp_path.iterdir()) == paths
    back = [d for p in paths for d in iter_jsonl_docs(p)]
    assert back == docs
    assert writer.docs_written == 300
    assert writer.bytes_written == sum(len(encode_line(d)) for d in docs)
    for p in paths:  # every shard respects the uncompressed cap (no single line here exceeds it)
        size = sum(len(encode_line(d)) for d in iter_jsonl_docs(p))
        assert size <= 4096


def test_line_format_is_compact_utf8(tmp_path: Path) -> None:
    doc = Document(id="1", text="héllo", source="s", metadata={"k": "ü"})
    _, (path,) = write_all(tmp_path, [doc], compression="none")
    assert path.read_bytes() == '{"id":"1","text":"héllo","source":"s","metadata":{"k":"ü"}}\n'.encode()
    assert json.loads(path.read_bytes()) == doc.to_dict()


@pytest.mark.parametrize("compression", ["zst", "gz", "none"])
def test_byte_identical_output(tmp_path: Path, compression: str) -> None:
    docs = make_docs(200)
    _, first = write_all(tmp_path / "a", docs, max_bytes=10_000, compression=compression)
    _, second = write_all(tmp_path / "b", docs, max_bytes=10_000, compression=compression)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_gzip_header_has_no_name_or_time(tmp_path: Path) -> None:
    _, (path,) = write_all(tmp_path, make_docs(3), compression="gz")
    header = path.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] == 0, "no FNAME/FEXTRA/FCOMMENT flags"
    assert header[4:8] == b"\0\0\0\0", "mtime is 0"
    assert len(gzip.decompress(path.read_bytes()).splitlines()) == 3


def test_zstd_frames_have_checksum_and_no_content_size(tmp_path: Path) -> None:
    _, (path,) = write_all(tmp_path, make_docs(3), compression="zst")
    params = zstandard.get_frame_parameters(path.read_bytes())
    assert params.has_checksum
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN


def test_nothing_written_creates_no_file(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "out", "part")
    assert writer.close() == []
    assert writer.close() == []
    assert not (tmp_path / "out").exists()


def test_shard_is_renamed_into_place_only_when_finished(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "part", max_bytes=1000)
    docs = make_docs(40)
    writer.write(docs[0])
    assert not (tmp_path / "part-00000.jsonl.zst").exists()
    (tmp,) = tmp_path.iterdir()
    assert tmp.name.startswith(".part-00000.jsonl.zst.") and tmp.name.endswith(".tmp")
    for doc in docs[1:]:
        writer.write(doc)
    finished = writer.paths
    assert finished and all(p.exists() for p in finished)
    assert not writer._shard_path(len(finished)).exists(), "the open shard has no final name yet"
    paths = writer.close()
    assert sorted(tmp_path.iterdir()) == paths, "no temporary files remain"


def test_oversized_document_gets_its_own_shard(tmp_path: Path) -> None:
    small, big = Document(id="s", text="x"), Document(id="b", text="y" * 5000)
    _, paths = write_all(tmp_path, [small, big, small], max_bytes=1000)
    assert [[d.id for d in iter_jsonl_docs(p)] for p in paths] == [["s"], ["b"], ["s"]]


def test_exception_discards_only_the_open_shard(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "part", max_bytes=500) as writer:
        for doc in make_docs(20):
            writer.write(doc)
        finished = writer.paths
        raise RuntimeError("boom")
    assert finished
    assert sorted(tmp_path.iterdir()) == finished


def test_write_after_close_and_bad_arguments(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, "part")
    writer.close()
    with pytest.raises(ValueError):
        writer.write(Document(id="1", text="x"))
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, "part", compression="bz2")
    with pytest.raises(ValueError):
        ShardWriter(tmp_path, "part", max_bytes=0)


def test_iter_jsonl_docs_reports_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id":"1","text":"a","source":"s","metadata":{}}\n\n{"id":"2"}\n', encoding="utf-8")
    it = iter_jsonl_docs(path)
    assert next(it).id == "1"
    with pytest.raises(ValueError, match=r"x\.jsonl:3"):
        next(it)
