"""Fixtures of the dedup tests: one planted corpus per session, and a fresh run folder per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmhpc.dedup.planted import PlantedCorpus, plant


@pytest.fixture(scope="session")
def planted() -> PlantedCorpus:
    """150 originals with planted duplicates and near misses, among 150 unrelated documents."""
    return plant(150, seed=7, background=150)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"
