"""Configuration of the curate stage: inputs, output sharding, bad-input limits, filters, selection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from lmhpc.curate.filters.config import FiltersConfig
from lmhpc.data.inputs import InputSpec

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


@dataclass
class SelectionConfig:
    """What happens after the filters: keep all (``none``), keep by a hard score ``threshold``, or
    ``sample`` with a probability derived from the score (seeded by the document id)."""

    mode: Literal["none", "threshold", "sample"] = "none"
    score: str = ""  # dotted path under metadata.scores, e.g. "classifier.hq" or "perplexity.perplexity"
    min_score: float | None = None  # threshold mode
    max_score: float | None = None
    sampler: Literal["pareto", "linear"] = "pareto"  # sample mode: P(keep) = (2 - q)^-alpha, or q
    alpha: float = 3.0
    invert: bool = False  # lower scores are better (q = 1 - score)
    sources: list[str] = field(default_factory=list)  # only these sources; empty: all

    def validate_at(self, key: str) -> None:
        from lmhpc.config import ConfigError

        if self.mode != "none" and not self.score:
            raise ConfigError(f"{key}.score", f"mode {self.mode!r} needs the score to select on")
        if self.mode == "threshold" and self.min_score is None and self.max_score is None:
            raise ConfigError(f"{key}.min_score", "threshold mode needs min_score and/or max_score")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise ConfigError(f"{key}.min_score", "is above max_score")
        if self.alpha <= 0:
            raise ConfigError(f"{key}.alpha", "must be > 0")


@dataclass
class CurateConfig:
    """Curate stage: where raw documents come from and how they are written."""

    inputs: list[InputSpec] = field(default_factory=list)
    shard_max_mb: float = 64.0
    max_bad_fraction: float = 0.05  # the stage fails when more than this share of records is bad
    max_doc_bytes: int = 20_000_000  # larger documents are quarantined, not loaded further
    samples_per_reason: int = 20  # dropped documents kept for inspection, per reason
    progress_every_s: float = 30.0
    write_scores: bool = True  # filter scores into metadata.scores (needed by rethreshold)
    write_dropped: bool = False  # also write every dropped document, with its reason, to dropped/
    report_top_domains: int = 20  # domains shown in the report (all go to report/domains.tsv)
    filters: FiltersConfig = field(default_factory=FiltersConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)

    # keys that do not change what the stage writes (a rerun may change them)
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("progress_every_s", "report_top_domains")

    def validate(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        if "curate" in root.run.stages and not self.inputs:
            raise ConfigError("curate.inputs", "at least one input is needed to run the curate stage")
        for i, spec in enumerate(self.inputs):
            spec.validate_at(f"curate.inputs[{i}]")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ConfigError("curate.max_bad_fraction", "must be between 0 and 1")
        if self.shard_max_mb <= 0:
            raise ConfigError("curate.shard_max_mb", "must be > 0")
        if self.max_doc_bytes <= 0:
            raise ConfigError("curate.max_doc_bytes", "must be > 0")
        if self.samples_per_reason < 0:
            raise ConfigError("curate.samples_per_reason", "must be >= 0")
        if self.report_top_domains < 0:
            raise ConfigError("curate.report_top_domains", "must be >= 0")
        self.filters.validate_at("curate.filters")
        self.selection.validate_at("curate.selection")
        for group in ("per_source", "per_domain"):
            for name, override in getattr(self.filters, group).items():
                for model in ("classifier", "perplexity"):
                    self._check_model(root, f"curate.filters.{group}.{name}.{model}.model",
                                      override.get(model, {}) if isinstance(override, dict) else {})
        for model in ("classifier", "perplexity"):
            section = getattr(self.filters, model)
            if section.enabled:
                self._check_model(root, f"curate.filters.{model}.model", {"model": section.model})

    @staticmethod
    def _check_model(root: RunConfig, key: str, section: object) -> None:
        from lmhpc.config import ConfigError

        model = section.get("model") if isinstance(section, dict) else None
        if model and "curate" in root.run.stages and not root.path(model).is_file():
            raise ConfigError(key, f"no model file {root.path(model)}")
