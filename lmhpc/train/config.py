"""Configuration of the pretrain stage."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PretrainConfig:
    """Pretrain stage settings."""

    def validate(self, root) -> None:
        return None
