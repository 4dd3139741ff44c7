"""Filter chains built from the config: one per effective setting (global, per source, per domain).

A chain runs its filters in :data:`FILTER_ORDER` and stops at the first that drops the document.
Documents of a source or domain with overrides get the chain of those settings; chains that share
settings share filter objects, so their counters add up in one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmhpc.curate.filters.base import BaseFilter
from lmhpc.curate.filters.c4 import C4QualityFilter
from lmhpc.curate.filters.code import CodeQualityFilter
from lmhpc.curate.filters.config import FILTER_ORDER, FiltersConfig
from lmhpc.curate.filters.domain import DomainFilter, domain_suffixes, url_host
from lmhpc.curate.filters.fineweb import FineWebQualityFilter
from lmhpc.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from lmhpc.curate.filters.language import LanguageFilter
from lmhpc.curate.filters.length import LengthFilter
from lmhpc.curate.filters.text import TextView
from lmhpc.data.documents import Document


def build_filters(cfg: FiltersConfig, base_dir: Path, samples_per_reason: int = 0,
                  write_scores: bool = True) -> list[BaseFilter]:
    """The enabled filters of ``cfg``, in chain order. Model paths are relative to ``base_dir``."""
    filters: list[BaseFilter] = []
    kw = {"samples_per_reason": samples_per_reason, "write_scores": write_scores}
    for name in FILTER_ORDER:
        section = getattr(cfg, name)
        if not section.enabled:
            continue
        if name == "domain":
            filters.append(DomainFilter(section, base_dir, samples_per_reason))
        elif name == "length":
            filters.append(LengthFilter(section, **kw))
        elif name == "language":
            filters.append(LanguageFilter(section, **kw))
        elif name == "gopher_repetition":
            filters.append(GopherRepetitionFilter(section, **kw))
        elif name == "gopher_quality":
            filters.append(GopherQualityFilter(section, **kw))
        elif name == "c4":
            filters.append(C4QualityFilter(section, **kw))
        elif name == "fineweb":
            filters.append(FineWebQualityFilter(section, **kw))
        elif name == "code":
            filters.append(CodeQualityFilter(section, **kw))
        elif name == "classifier":
            from lmhpc.curate.filters.classifier import ClassifierFilter

            filters.append(ClassifierFilter(section, _resolve(base_dir, section.model), **kw))
        elif name == "perplexity":
            from lmhpc.curate.filters.perplexity import PerplexityFilter

            filters.append(PerplexityFilter(section, _resolve(base_dir, section.model), **kw))
    return filters


def _resolve(base_dir: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (Path(base_dir) / p).resolve()


class FilterChain:
    """Filters run in order; the first drop ends the chain."""

    def __init__(self, filters: list[BaseFilter]) -> None:
        self.filters = filters

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.filters]

    def __call__(self, doc: Document) -> str | None:
        """``None`` when every filter keeps ``doc`` (its text may have been cleaned), else the reason."""
        view = TextView(doc)
        for f in self.filters:
            reason = f(view)
            if reason is not None:
                return reason
        return None


class ChainSet:
    """Picks the chain for each document: per-domain overrides first, then per-source, then global."""

    def __init__(self, cfg: FiltersConfig, base_dir: Path, samples_per_reason: int = 0,
                 write_scores: bool = True) -> None:
        self.cfg = cfg
        self._args = (base_dir, samples_per_reason, write_scores)
        self._by_settings: dict[str, FilterChain] = {}
        self._source_chain: dict[str, FilterChain] = {}
        self.default = self._chain_for(cfg)
        self.domains = frozenset(d.lower() for d in cfg.per_domain)

    def _chain_for(self, cfg: FiltersConfig) -> FilterChain:
        from lmhpc.config import to_dict

        key = json.dumps(to_dict(cfg, redact=False), sort_keys=True)
        chain = self._by_settings.get(key)
        if chain is None:
            chain = self._by_settings[key] = FilterChain(build_filters(cfg, *self._args))
        return chain

    def chain_for(self, doc: Document) -> tuple[str, FilterChain]:
        """(subset label, chain) for ``doc``: ``"domain:<d>"``, ``"source:<s>"`` or ``"default"``."""
        if self.domains and doc.url:
            for d in domain_suffixes(url_host(doc.url)):
                if d in self.domains:
                    label = f"domain:{d}"
                    chain = self._source_chain.get(label)
                    if chain is None:
                        override = {k.lower(): v for k, v in self.cfg.per_domain.items()}[d]
                        base = self._base_for_source(doc.source)
                        chain = self._source_chain[label] = self._chain_for(base.overridden(override))
                    return label, chain
        if doc.source in self.cfg.per_source:
            label = f"source:{doc.source}"
            chain = self._source_chain.get(label)
            if chain is None:
                chain = self._source_chain[label] = self._chain_for(self._base_for_source(doc.source))
            return label, chain
        return "default", self.default

    def _base_for_source(self, source: str) -> FiltersConfig:
        override = self.cfg.per_source.get(source)
        return self.cfg.overridden(override) if override else self.cfg

    def filters(self) -> list[BaseFilter]:
        """Every distinct filter object of every chain built so far."""
        seen: dict[int, BaseFilter] = {}
        for chain in self._by_settings.values():
            for f in chain.filters:
                seen.setdefault(id(f), f)
        return list(seen.values())

    def stats(self) -> dict[str, Any]:
        """Per filter name: documents in, drops by reason, seconds (summed over chains)."""
        out: dict[str, Any] = {}
        for f in self.filters():
            s = f.stats()
            mine = out.setdefault(f.name, {"in": 0, "dropped": {}, "seconds": 0.0})
            mine["in"] += s["in"]
            mine["seconds"] = round(mine["seconds"] + s["seconds"], 6)
            for reason, n in s["dropped"].items():
                mine["dropped"][reason] = mine["dropped"].get(reason, 0) + n
        return out

    def samples(self) -> dict[str, list[dict[str, Any]]]:
        """Drop samples by qualified reason, from every chain."""
        out: dict[str, list[dict[str, Any]]] = {}
        for f in self.filters():
            for reason, docs in f.samples.items():
                out.setdefault(reason, []).extend(docs)
        return out
