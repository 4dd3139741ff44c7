"""Quarantine file: lazy, atomic, raw bytes kept faithfully."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from lmhpc.data.quarantine import Quarantine, decode_raw, read_quarantine


def test_nothing_added_creates_no_file(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "sub" / "q.jsonl")
    q.close()
    q.close()
    assert not (tmp_path / "sub").exists()
    assert q.total == 0
    assert list(read_quarantine(tmp_path / "sub" / "q.jsonl")) == []


def test_entries_counts_and_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    q = Quarantine(path)
    q.add("invalid_json", "a.jsonl:3", b"{nope", "Expecting value")
    q.add("invalid_json", "a.jsonl:4", "still {nope")
    q.add("unreadable_file", "b.jsonl.gz", detail="BadGzipFile")
    assert not path.exists(), "the final name appears only on close"
    assert len(list(tmp_path.iterdir())) == 1  # the temporary file
    q.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]
    assert q.counts == {"invalid_json": 2, "unreadable_file": 1}
    assert q.total == 3
    entries = list(read_quarantine(path))
    assert [e["location"] for e in entries] == ["a.jsonl:3", "a.jsonl:4", "b.jsonl.gz"]
    first = entries[0]
    assert first == {
        "reason": "invalid_json",
        "location": "a.jsonl:3",
        "detail": "Expecting value",
        "raw": "{nope",
        "raw_bytes": 5,
        "raw_truncated": False,
    }
    assert entries[2]["raw"] is None and entries[2]["raw_bytes"] == 0


def test_non_utf8_raw_is_base64(tmp_path: Path) -> None:
    raw = b'{"text": "caf\xe9 \xff\xfe"}'
    with Quarantine(tmp_path / "q.jsonl") as q:
        q.add("invalid_utf8", "x:1", raw)
    (entry,) = read_quarantine(tmp_path / "q.jsonl")
    assert entry["raw_encoding"] == "base64"
    assert base64.b64decode(entry["raw"]) == raw
    assert decode_raw(entry) == raw
    assert entry["raw_bytes"] == len(raw) and not entry["raw_truncated"]


def test_raw_truncation_keeps_whole_characters(tmp_path: Path) -> None:
    with Quarantine(tmp_path / "q.jsonl", keep_raw_bytes=5) as q:
        q.add("too_large", "x:1", "abcd\u00e9fgh")  # the cut falls inside the two-byte é
        q.add("too_large", "x:2", b"0123456789", raw_size=1_000_000)
    a, b = read_quarantine(tmp_path / "q.jsonl")
    assert a["raw"] == "abcd" and a["raw_bytes"] == 9 and a["raw_truncated"]
    assert "raw_encoding" not in a
    assert b["raw"] == "01234" and b["raw_bytes"] == 1_000_000 and b["raw_truncated"]


def test_zst_quarantine_is_compressed(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl.zst"
    with Quarantine(path) as q:
        for i in range(100):
            q.add("empty_text", f"x:{i}", "   ")
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert [e["location"] for e in read_quarantine(path)] == [f"x:{i}" for i in range(100)]


def test_context_manager_keeps_evidence_on_error(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    with pytest.raises(RuntimeError), Quarantine(path) as q:
        q.add("invalid_json", "x:1", "{")
        raise RuntimeError("stage failed")
    assert len(list(read_quarantine(path))) == 1


def test_add_after_close_is_an_error(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q.jsonl")
    q.close()
    with pytest.raises(ValueError):
        q.add("invalid_json", "x:1")


def test_lone_surrogate_string_is_kept(tmp_path: Path) -> None:
    with Quarantine(tmp_path / "q.jsonl") as q:
        q.add("invalid_utf8", "x:1", "bad \ud800 text")
    (entry,) = read_quarantine(tmp_path / "q.jsonl")
    assert entry["raw_encoding"] == "base64"
    assert decode_raw(entry) == "bad \ud800 text".encode("utf-8", "surrogatepass")
