"""Shared fixtures: the repo root, the venv's interpreter, and small configs written to tmp_path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def python_exe() -> str:
    return sys.executable


def write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config({...})`` writes a config YAML under tmp_path (runs go to tmp_path/runs)."""

    def _make(data: dict, name: str = "config.yaml") -> Path:
        data = dict(data)
        run = {"name": "t", "runs_dir": str(tmp_path / "runs"), **data.get("run", {})}
        data["run"] = run
        data.setdefault("wandb", {"mode": "offline", "project": "lmhpc-tests"})
        return write_config(tmp_path / name, data)

    return _make
