"""What a data stage reads from outside the run: input collections named in the config."""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass
class InputSpec:
    """One input collection: a glob of files (relative to the config file's folder)."""

    path: str = ""
    source: str | None = None  # domain/source name; default: the record's own, else the folder name
    format: Literal["auto", "jsonl", "parquet", "warc"] = "auto"
    text_key: str = "text"
    id_key: str = "id"
    weight: float = 1.0  # mixing weight used by selection and tokenizer sampling

    def validate_at(self, key: str) -> None:
        from lmhpc.config import ConfigError

        if not self.path:
            raise ConfigError(f"{key}.path", "must name a file or glob")
        if self.weight < 0:
            raise ConfigError(f"{key}.weight", "must be >= 0")


class NoInputFiles(ValueError):
    """An input spec's glob matches no file."""


def expand_inputs(specs: list[InputSpec], resolve: Callable[[str], Path], key: str) -> list[tuple[Path, int]]:
    """Every file the specs match, with the index of the first spec that matched it, sorted by path and
    de-duplicated. ``resolve`` turns a config path into an absolute one; ``key`` names the list in errors
    (``curate.inputs``)."""
    seen: dict[Path, int] = {}
    for i, spec in enumerate(specs):
        pattern = str(resolve(spec.path))
        matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not matches:
            raise NoInputFiles(f"{key}[{i}].path: no file matches {pattern}")
        for p in matches:
            seen.setdefault(p.resolve(), i)
    return sorted(seen.items())
