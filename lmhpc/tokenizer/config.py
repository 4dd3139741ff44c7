"""Configuration of the tokenizer and tokenize stages."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizerConfig:
    """Tokenizer training settings."""

    def validate(self, root) -> None:
        return None


@dataclass
class TokenizeConfig:
    """Tokenize stage settings."""

    def validate(self, root) -> None:
        return None
