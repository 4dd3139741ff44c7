"""Checks of the dedup stage before anything is submitted: its raw inputs (``dedup.inputs``), if any."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmhpc.data.check import check_inputs

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def preflight(cfg: RunConfig) -> list[str]:
    """Every raw input that matches nothing, cannot be read or has an unknown format, by name."""
    return check_inputs(cfg.dedup.inputs, cfg.path, "dedup.inputs") if cfg.dedup.inputs else []
