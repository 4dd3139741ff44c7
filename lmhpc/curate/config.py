"""Configuration of the curate stage: inputs, output sharding, bad-input limits, filters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lmhpc.curate.filters.config import FiltersConfig

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


@dataclass
class InputSpec:
    """One input collection: a glob of files (relative to the config file's folder)."""

    path: str = ""
    source: str | None = None  # domain/source name; default: the record's own, else the folder name
    format: Literal["auto", "jsonl", "parquet", "warc"] = "auto"
    text_key: str = "text"
    id_key: str = "id"
    weight: float = 1.0  # mixing weight used by selection and tokenizer sampling


@dataclass
class CurateConfig:
    """Curate stage: where raw documents come from and how they are written."""

    inputs: list[InputSpec] = field(default_factory=list)
    shard_max_mb: float = 64.0
    max_bad_fraction: float = 0.05  # the stage fails when more than this share of records is bad
    max_doc_bytes: int = 20_000_000  # larger documents are quarantined, not loaded further
    samples_per_reason: int = 20
    progress_every_s: float = 30.0
    filters: FiltersConfig = field(default_factory=FiltersConfig)

    def validate(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        if "curate" in root.run.stages and not self.inputs:
            raise ConfigError("curate.inputs", "at least one input is needed to run the curate stage")
        for i, spec in enumerate(self.inputs):
            if not spec.path:
                raise ConfigError(f"curate.inputs[{i}].path", "must name a file or glob")
            if spec.weight < 0:
                raise ConfigError(f"curate.inputs[{i}].weight", "must be >= 0")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError("curate.max_bad_fraction", "must be between 0 and 1")
        if self.shard_max_mb <= 0:
            raise ConfigError("curate.shard_max_mb", "must be > 0")
        if self.max_doc_bytes <= 0:
            raise ConfigError("curate.max_doc_bytes", "must be > 0")
        self.filters.validate_at("curate.filters")
