"""The variants of an ablation, built from the config, and the run config each variant's data is made under.

A variant's config is a copy of the run's with its ``curate:``/``tokenize:`` sections changed the variant's way and
its run folder moved to ``<run>/ablate/variants/<variant>/``, so the curate, dedup and tokenize library code
writes there exactly as it writes a run's stages.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmhpc.ablate.config import AblateConfig, filter_enabled_anywhere, input_source

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

BASELINE = "baseline"
VARIANTS_DIR = "variants"


@dataclass(frozen=True)
class Variant:
    """One variant of the data: what differs from the baseline."""

    name: str
    description: str
    without_filter: str | None = None  # this filter is off everywhere
    dedup: bool = True
    source: str | None = None  # only the inputs of this source
    mix: dict[str, float] = field(default_factory=dict)  # shares of the tokens per source (unnamed: none)

    @property
    def kind(self) -> str:
        if self.without_filter:
            return "without_filter"
        if not self.dedup:
            return "without_dedup"
        if self.source:
            return "source"
        if self.mix:
            return "mix"
        return "baseline"


def build_variants(cfg: AblateConfig, root: RunConfig) -> list[Variant]:
    """The baseline first, then the variants in config order: filters, dedup, sources, mixes."""
    out = [Variant(BASELINE, "every filter, dedup, the run's mix")]
    for name in cfg.without:
        out.append(Variant(f"without_{name}", f"every filter but {name}", without_filter=name))
    if cfg.without_dedup:
        out.append(Variant("without_dedup", "every filter, no dedup", dedup=False))
    if cfg.sources:
        for source in sorted({input_source(s) for s in root.curate.inputs}):
            out.append(Variant(f"only_{source}", f"the {source} inputs alone", source=source))
    for name, weights in cfg.mixes.items():
        mix = {s: float(w) for s, w in sorted(weights.items())}
        text = ", ".join(f"{s} {w:g}" for s, w in mix.items())
        out.append(Variant(f"mix_{name}", f"token shares {text}", mix=mix))
    return out


def variant_filters(filters: Any, name: str) -> Any:
    """A copy of the curate filter settings with filter ``name`` off, globally and in every override."""
    out = copy.deepcopy(filters)
    getattr(out, name).enabled = False
    for group in (out.per_source, out.per_domain):
        for subset, override in group.items():
            if isinstance(override, dict):
                section = dict(override.get(name) or {})
                section["enabled"] = False
                group[subset] = {**override, name: section}
    if filter_enabled_anywhere(out, name):  # cannot happen; a guard against a new kind of override
        raise ValueError(f"filter {name} is still on after turning it off")
    return out


def variant_config(root: RunConfig, variant: Variant, stage_dir: Path) -> RunConfig:
    """The run config under which ``variant``'s data is made, its run folder ``<stage_dir>/variants/<name>``."""
    cfg = copy.deepcopy(root)
    cfg.run.runs_dir = str(Path(stage_dir).resolve() / VARIANTS_DIR)
    cfg.run.name = variant.name
    curate = cfg.curate
    if variant.without_filter:
        curate.filters = variant_filters(curate.filters, variant.without_filter)
    if variant.source:
        curate.inputs = [s for s in curate.inputs if input_source(s) == variant.source]
    for spec in curate.inputs:  # curate's source name is the same for every variant, whatever the subset
        spec.source = input_source(spec)
    cfg.dedup.inputs = []  # dedup reads the variant's curated shards
    if variant.mix:  # shares as given; a source the mix does not name gets no tokens
        cfg.tokenize.blend_mix = "weights"
        sources = {input_source(s) for s in curate.inputs}
        cfg.tokenize.blend_weights = {s: variant.mix.get(s, 0.0) for s in sorted(sources)}
    cfg.tokenize.output = "per_source"
    return cfg
