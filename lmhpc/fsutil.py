"""Atomic file writes: write to a temporary name in the same folder, then rename into place.

The temporary file gets the mode a plain ``open()`` would have given the final file (``0o666`` less the
process umask), so outputs stay readable to a project group; ``tempfile.mkstemp`` alone makes them ``0600``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read from ``/proc`` where there is one, so that it is never changed, even briefly."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere the only way to read it is to set it and put it back
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def temp_file_beside(path: Path) -> tuple[int, Path]:
    """A new temporary file in ``path``'s folder (created if needed), open as a descriptor, with the mode a
    plain ``open(path, "w")`` would give ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``."""
    path = Path(path)
    fd, tmp_path = temp_file_beside(path)
    os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", fsync: bool = True, **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; renamed into place on success."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def write_text(path: str | Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", fsync=fsync, encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, data: Any, fsync: bool = True) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", fsync=fsync)


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when there is no such file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return default
