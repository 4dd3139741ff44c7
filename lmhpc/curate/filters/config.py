"""Configuration of the curate stage's filters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FiltersConfig:
    """Which filters run, with their thresholds. Empty: documents are only validated and sharded."""

    def validate_at(self, key: str) -> None:
        return None
