"""Small builders shared by tests: corpora of jsonl files, stage configs."""

from __future__ import annotations

import gzip
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

import pytest


def write_jsonl_corpus(folder: Path, files: int = 4, docs_per_file: int = 25, bad_lines: bool = False,
                       gz: bool = False) -> list[Path]:
    """Real-looking documents (sentences over a small vocabulary), some files gzip'ed."""
    words = ("the river carries salt to the sea while old towns along its banks keep their markets open "
             "under slate roofs and bakers sell bread before dawn").split()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        lines = []
        for d in range(docs_per_file):
            n = 20 + (f * 7 + d * 13) % 40
            text = " ".join(words[(f + d + i * 3) % len(words)] for i in range(n)) + "."
            lines.append(json.dumps({"id": f"f{f}-d{d}", "text": text, "source": "prose"}))
        if bad_lines:
            lines.insert(3, "{not json")
            lines.insert(7, json.dumps({"id": "no-text"}))
        data = ("\n".join(lines) + "\n").encode()
        path = folder / (f"part-{f:03d}.jsonl.gz" if gz and f % 2 else f"part-{f:03d}.jsonl")
        if path.suffix == ".gz":
            path.write_bytes(gzip.compress(data, mtime=0))
        else:
            path.write_bytes(data)
        paths.append(path)
    return paths


def curate_config(tmp_path: Path, corpus: Path, **extra) -> dict:
    cfg = {
        "run": {"name": "t", "runs_dir": str(tmp_path / "runs"), "stages": ["curate"]},
        "wandb": {"mode": "offline", "project": "lmhpc-tests"},
        "curate": {"inputs": [{"path": str(corpus / "*.jsonl*"), "source": "prose"}]},
    }
    for key, value in extra.items():
        node = cfg
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg


def tree_bytes(folder: Path, pattern: str = "*.jsonl*") -> dict[str, bytes]:
    """Relative path → bytes of every file matching pattern below folder (for identity checks)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob(pattern))}


def import_peer(module: str) -> ModuleType:
    """A test-only peer (requirements-test.txt): skipped where it is missing, unless the test set-up
    installed the peers (tools/test.sh sets LMHPC_REQUIRE_PEERS=1), where a missing one fails."""
    if os.environ.get("LMHPC_REQUIRE_PEERS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)
