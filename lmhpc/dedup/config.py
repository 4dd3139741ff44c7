"""Configuration of the dedup stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DedupConfig:
    """Dedup stage settings."""

    def validate(self, root) -> None:
        return None
