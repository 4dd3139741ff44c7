"""A cheap look at input files before anything runs: is each one readable, and of a format we read?

``check_inputs`` lists, for every input spec, each matched file that cannot be opened or that does not look
like its format (by its name, then by its first bytes: a README matched by ``*``, plain text named
``.jsonl.gz``, gzip data named ``.jsonl``, a Parquet file without its magic), and every glob that matches no
file. Folders matched by a glob are not inputs and are passed over, as the stages do. The check reads at most
``SNIFF_BYTES`` of a file (and the last bytes of a Parquet file); a file that looks right may still hold bad
records, which the readers quarantine.
"""

from __future__ import annotations

import glob
import io
import os
import stat
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import zstandard

from lmhpc.data.readers import FORMAT_SUFFIXES, detect_format
from lmhpc.data.writers import compression_for

if TYPE_CHECKING:
    from lmhpc.data.inputs import InputSpec

SNIFF_BYTES = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
_CODEC_NAMES = {"gz": "gzip", "zst": "zstd"}


def check_inputs(specs: Sequence[InputSpec], resolve: Callable[[str], Path], key: str) -> list[str]:
    """Every problem with the files the specs match, one line each: ``<key>[<i>].path: <file>: <why>``, or
    ``<key>[<i>].path: no file matches <glob>``. ``resolve`` turns a config path into an absolute one."""
    problems: list[str] = []
    for i, spec in enumerate(specs):
        pattern = str(resolve(spec.path))
        matches = [p for p in sorted(glob.glob(pattern, recursive=True)) if not os.path.isdir(p)]
        if not matches:
            problems.append(f"{key}[{i}].path: no file matches {pattern}")
        for match in matches:
            why = check_file(Path(match), spec.format)
            if why is not None:
                problems.append(f"{key}[{i}].path: {match}: {why}")
    return problems


def check_file(path: Path, fmt: str = "auto") -> str | None:
    """Why ``path`` cannot be read as an input of format ``fmt`` (``"auto"``: by its name), or None."""
    if fmt == "auto":
        try:
            fmt = detect_format(path)
        except ValueError:
            return f"unknown format: the name ends in none of {', '.join(_suffixes())}; set the input's format"
    if fmt not in FORMAT_SUFFIXES:
        return f"unsupported format {fmt!r}"
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            return "not a regular file"
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
            tail = _tail(fh, len(_PARQUET_MAGIC)) if fmt == "parquet" else b""
    except OSError as exc:
        return f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})"
    if fmt == "parquet":
        return None if head.startswith(_PARQUET_MAGIC) and tail == _PARQUET_MAGIC else "not a Parquet file"
    if not head:
        return None  # an empty file holds no records
    named, actual = compression_for(path), _codec_of(head)
    if named != actual:
        if named == "none":
            return f"{_CODEC_NAMES[actual]}-compressed data, but the name does not end in .{actual}"
        return f"not {_CODEC_NAMES[named]} data, but the name ends in .{named}"
    data = _decoded_start(head, actual)
    if data is None:
        return None  # damage at the start: the readers quarantine what they cannot decode
    return _content_problem(data, fmt)


def _suffixes() -> list[str]:
    return [s for group in FORMAT_SUFFIXES.values() for s in group]


def _tail(fh: io.BufferedReader, n: int) -> bytes:
    size = os.fstat(fh.fileno()).st_size
    if size < 2 * n:
        return b""
    fh.seek(size - n)
    return fh.read(n)


def _codec_of(head: bytes) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gz"
    if head.startswith(_ZSTD_MAGIC):
        return "zst"
    return "none"


def _decoded_start(head: bytes, codec: str) -> bytes | None:
    """Up to ``SNIFF_BYTES`` of the decompressed start of a file, or None when it does not decode."""
    try:
        if codec == "gz":
            return zlib.decompressobj(wbits=31).decompress(head, SNIFF_BYTES)
        if codec == "zst":
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(head)) as reader:
                return reader.read(SNIFF_BYTES)
    except (zlib.error, zstandard.ZstdError, EOFError):
        return None
    return head


def _content_problem(data: bytes, fmt: str) -> str | None:
    start = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not start:
        return None
    if fmt == "jsonl" and not start.startswith(b"{"):
        return f"does not look like JSON lines: it starts with {start[:24]!r}, not a JSON object"
    if fmt == "warc" and not start.startswith(b"WARC/"):
        return f"does not look like a WARC file: it starts with {start[:24]!r}, not 'WARC/'"
    return None
