"""The hosts of a SLURM allocation: ``SLURM_JOB_NODELIST`` (``node[01-03,07],gpu5``) as host names."""

from __future__ import annotations

import re
import subprocess

_GROUP = re.compile(r"\[([^\]]*)\]")


def _split_top_level(nodelist: str) -> list[str]:
    """``a[1-2],b3`` → ``["a[1-2]", "b3"]``: commas inside brackets do not separate hosts."""
    parts, depth, current = [], 0, ""
    for ch in nodelist:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        current += ch
    parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str) -> list[str]:
    """``01-03,7`` → ``["01", "02", "03", "7"]``; zero padding follows the range's first bound."""
    out = []
    for item in spec.split(","):
        lo, _, hi = item.partition("-")
        if not hi:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """Every host of a compressed SLURM node list, in order, like ``scontrol show hostnames``."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        names = [""]
        pos = 0
        for m in _GROUP.finditer(part):
            names = [n + part[pos:m.start()] + x for n in names for x in _expand_range(m.group(1))]
            pos = m.end()
        hosts.extend(n + part[pos:] for n in names)
    return hosts


def first_host(nodelist: str | None) -> str | None:
    """The first host of ``nodelist`` (the rendezvous host of a multi-node job): ``scontrol show
    hostnames`` where it runs, the list expanded here otherwise; None for an empty list."""
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    hosts = expand_nodelist(nodelist)
    return hosts[0] if hosts else None
