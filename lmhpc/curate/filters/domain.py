"""Block and allow lists by web domain and URL pattern."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from lmhpc.curate.filters.base import BaseFilter, FilterResult
from lmhpc.curate.filters.config import DomainFilterConfig
from lmhpc.curate.filters.text import TextView


def url_host(url: str | None) -> str:
    """The lower-cased host of ``url`` without a leading ``www.``; empty when there is none."""
    if not url:
        return ""
    try:
        host = urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    host = host.lower().rstrip(".")
    return host[4:] if host.startswith("www.") else host


def domain_suffixes(host: str) -> list[str]:
    """``a.b.example.com`` → ``[a.b.example.com, b.example.com, example.com, com]``."""
    parts = host.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))] if host else []


def matches_domain(host: str, domains: set[str] | frozenset[str]) -> bool:
    """True when ``host`` is one of ``domains`` or a subdomain of one."""
    return any(d in domains for d in domain_suffixes(host))


def read_domain_list(path: str | Path) -> list[str]:
    """Domains from a file, one a line; blank lines and ``#`` comments are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            out.append(line[4:] if line.startswith("www.") else line)
    return out


class DomainFilter(BaseFilter):
    """Drops documents from blocked domains or URLs; allow rules are exceptions (or, with
    ``allow_only``, the only documents kept)."""

    name = "domain"

    def __init__(self, cfg: DomainFilterConfig, base_dir: Path | None = None, samples_per_reason: int = 0) -> None:
        super().__init__(samples_per_reason)
        self.cfg = cfg
        blocked = [d.lower() for d in cfg.block_domains]
        for f in cfg.block_domains_files:
            path = Path(f) if base_dir is None or Path(f).is_absolute() else Path(base_dir) / f
            blocked.extend(read_domain_list(path))
        self.block_domains = frozenset(blocked)
        self.allow_domains = frozenset(d.lower() for d in cfg.allow_domains)
        self.block_patterns = [re.compile(p) for p in cfg.block_url_patterns]
        self.allow_patterns = [re.compile(p) for p in cfg.allow_url_patterns]

    def filter(self, doc: TextView) -> FilterResult:
        url = doc.url
        if not url:
            return (False, "no_url") if self.cfg.require_url or self.cfg.allow_only else True
        host = url_host(url)
        allowed = matches_domain(host, self.allow_domains) or any(p.search(url) for p in self.allow_patterns)
        if allowed:
            return True
        if self.cfg.allow_only:
            return False, "not_allowed"
        if matches_domain(host, self.block_domains):
            return False, "blocked_domain"
        if any(p.search(url) for p in self.block_patterns):
            return False, "blocked_url"
        return True
