"""A curate -> dedup chain config over a planted corpus written as raw JSON-lines input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from lmhpc.curate.filters.config import FILTER_ORDER
from lmhpc.dedup.planted import PlantedCorpus
from tests.dedup.corpus import REPO


def write_jsonl_inputs(folder: Path, corpus: PlantedCorpus, files: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(files):
        lines = [json.dumps(d.to_dict()) for d in corpus.docs[k::files]]
        (folder / f"part-{k}.jsonl").write_text("\n".join(lines) + "\n")


def chain_config(path: Path, inputs: Path, runs_dir: Path, ranks: int = 2, **executor: object) -> Path:
    """curate (filters off: the planted text is synthetic) then dedup on ``ranks`` MPI ranks."""
    data = {
        "run": {"name": "t", "runs_dir": str(runs_dir), "stages": ["curate", "dedup"]},
        "executor": {"kind": "local", **executor},
        "resources": {"curate": {"tasks": 2, "timeout_min": 10, "mem_gb": 1},
                      "dedup": {"tasks": ranks, "timeout_min": 10, "mem_gb": 2}},
        "wandb": {"mode": "disabled"},
        "curate": {"inputs": [{"path": str(inputs / "*.jsonl"), "source": "planted"}],
                   "filters": {name: {"enabled": False} for name in FILTER_ORDER}},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def lmhpc(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)
