"""Output files get the mode the process umask allows (as a plain open() would), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmhpc.data.documents import Document
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.writers import ShardWriter
from lmhpc.fsutil import atomic_open, atomic_path, current_umask, write_json, write_text


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_writer_respects_the_umask(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    assert current_umask() == umask
    write_text(tmp_path / "a.txt", "x")
    write_json(tmp_path / "b.json", {"x": 1})
    with atomic_open(tmp_path / "c.bin", "wb") as fh:
        fh.write(b"x")
    with atomic_path(tmp_path / "d.bin") as tmp, open(tmp, "wb") as fh:
        fh.write(b"x")
    with ShardWriter(tmp_path / "shards", "part") as writer:
        writer.write(Document("1", "text"))
    with Quarantine(tmp_path / "q.jsonl") as q:
        q.add("invalid_json", "x:1", b"{")
    written = [tmp_path / n for n in ("a.txt", "b.json", "c.bin", "d.bin", "q.jsonl")] + writer.paths
    assert {p.name: oct(mode(p)) for p in written} == {p.name: oct(expected) for p in written}
    if umask == 0o022:
        assert mode(tmp_path / "a.txt") == 0o644
