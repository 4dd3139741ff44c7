"""Fixtures for pretrain tests: prepared run folders, and launching N ranks as separate processes
the way SLURM does (one process per rank with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.train.fixtures import make_tokenized, tiny_pretrain

REPO = Path(__file__).resolve().parents[2]

# Tiny models on a shared 2-core machine: one intra-op thread avoids OpenMP spin contention, which
# otherwise makes each step ~30x slower when other processes use the cores.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prepared_inputs(tmp_path_factory) -> Path:
    """tokenizer/ and tokenize/ stage folders, built once per session."""
    root = tmp_path_factory.mktemp("pretrain-inputs")
    make_tokenized(root)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PretrainRun:
    """One run folder with the inputs in place and a config; runs the stage with N ranks."""

    def __init__(self, tmp_path: Path, inputs: Path, name: str, section: dict, world: int) -> None:
        self.run_dir = tmp_path / "runs" / name
        self.run_dir.mkdir(parents=True)
        for stage in ("tokenizer", "tokenize"):
            shutil.copytree(inputs / stage, self.run_dir / stage)
        self.world = world
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump({
            "run": {"name": name, "runs_dir": str(tmp_path / "runs"), "stages": ["pretrain"]},
            "resources": {"pretrain": {"tasks": world}},
            "wandb": {"mode": "disabled"},
            "pretrain": section,
        }))

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / "pretrain"

    def start(self, extra_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for rank in range(self.world):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(self.world), "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WANDB_MODE": "disabled",
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra_env or {})}
            log = open(self.run_dir / f"rank{rank}.log", "a")
            procs.append(subprocess.Popen([sys.executable, "-m", "lmhpc", "stage", "pretrain", str(self.config)],
                                          env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        return procs

    def logs(self) -> str:
        return "\n".join((self.run_dir / f"rank{r}.log").read_text()[-4000:] for r in range(self.world))

    def run(self, timeout: float = 240) -> list[int]:
        procs = self.start()
        try:
            codes = [p.wait(timeout=timeout) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        return codes

    def losses(self) -> list[float]:
        from lmhpc.train.metrics import read_metrics

        return [row["loss"] for row in read_metrics(self.stage_dir / "metrics.jsonl")]


@pytest.fixture
def pretrain_run(tmp_path, prepared_inputs, monkeypatch):
    """``pretrain_run(name, section, world)`` → a :class:`PretrainRun`. W&B is off for in-process runs
    (WANDB_MODE in the environment would override the config's ``disabled``)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")

    def _make(name: str, section: dict | None = None, world: int = 1) -> PretrainRun:
        return PretrainRun(tmp_path, prepared_inputs, name, section or tiny_pretrain(), world)

    return _make
