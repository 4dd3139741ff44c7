"""Builders for dedup tests: curated shards written as the curate stage writes them, configs, MPI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from lmhpc.data.documents import Document
from lmhpc.data.writers import ShardWriter, open_compressed_reader
from lmhpc.dedup.planted import predicted_clusters
from lmhpc.launch.local import venv_tool

REPO = Path(__file__).resolve().parents[2]


def write_curated(run_dir: Path, docs: list[Document], shards: int = 8) -> list[Path]:
    """The documents as a complete curate output: ``shards`` files of consecutive documents, then DONE."""
    data = run_dir / "curate" / "data"
    per = max(1, -(-len(docs) // shards))
    paths = []
    for i in range(shards):
        with ShardWriter(data, f"part-{i:05d}") as w:
            for d in docs[i * per : (i + 1) * per]:
                w.write(d)
        paths += w.paths
    (run_dir / "curate" / "DONE").write_text("{}\n")
    return paths


def dedup_config(path: Path, runs_dir: Path, name: str = "t", wandb: str = "disabled", **dedup: object) -> Path:
    """A config file that runs only the dedup stage."""
    data = {
        "run": {"name": name, "runs_dir": str(runs_dir), "stages": ["dedup"]},
        "wandb": {"mode": wandb, "project": "lmhpc-tests"},
        "dedup": dedup,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mpi_command(config: Path, ranks: int, *overrides: str) -> list[str]:
    return [venv_tool("mpiexec"), "-n", str(ranks), sys.executable, "-m", "lmhpc", "stage", "dedup", str(config),
            *overrides]


def run_dedup_mpi(config: Path, ranks: int, *overrides: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m lmhpc stage dedup config``."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(mpi_command(config, ranks, *overrides), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


def output_tree(stage_dir: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every output file (documents, drop lists, quarantine), temp files excluded."""
    out = {}
    for sub in ("data", "dropped", "quarantine"):
        folder = stage_dir / sub
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and not p.name.startswith("."):
                    out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


def read_jsonl(path: Path) -> list[dict]:
    with open_compressed_reader(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def kept_ids(stage_dir: Path) -> list[str]:
    return [d["id"] for p in sorted((stage_dir / "data").glob("part-*")) for d in read_jsonl(p)]


def dropped_records(stage_dir: Path) -> list[dict]:
    return [r for p in sorted((stage_dir / "dropped").glob("*.jsonl.zst")) for r in read_jsonl(p)]


def predicted_from_dropped(stage_dir: Path) -> dict[str, str]:
    """Predicted clusters from the stage's drop lists (each dropped document linked to the one kept)."""
    return predicted_clusters([(r["id"], r["kept_id"]) for r in dropped_records(stage_dir) if "kept_id" in r])
