"""What both Constitutional AI stages share: the frozen prompt list, prompt chunks as units of work, seeds, the
model, and chunk files written atomically before their unit's completion marker."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.fsutil import atomic_open, read_json, write_json

PROMPTS_FILE = "prompts.jsonl"  # the stage's prompts, in the order they are worked on
SELECTION_FILE = "prompt_selection.json"  # how they were chosen: files, counts, bad lines by reason
CHUNKS_DIR = "chunks"
QUARANTINE_DIR = "quarantine"


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the run seed and where it is used (stage, unit, round, step): the same parts give the same
    seed on every machine, whichever task runs the unit."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sampled_principle(principles: tuple[Any, ...], *parts: object) -> Any:
    """The principle a prompt gets at a round (seeded by its position in the prompt list, not its chunk)."""
    return random.Random(":".join(map(str, parts))).choice(principles)


def frozen_prompts(ctx: StageContext, build: Callable[[Quarantine], tuple[list[str], dict[str, Any]]]
                   ) -> list[str]:
    """The stage's prompt list: built once by ``build(quarantine)`` (which returns the prompts and what to record
    of their selection) at the stage's first start and read back from ``prompts.jsonl`` afterwards, so that every
    task and every requeue works on the same list."""
    path = ctx.stage_dir / PROMPTS_FILE
    if not path.exists():
        with Quarantine(ctx.stage_dir / QUARANTINE_DIR / "prompts.jsonl") as quarantine:
            prompts, record = build(quarantine)
            counts = dict(sorted(quarantine.counts.items()))
        write_json(ctx.stage_dir / SELECTION_FILE, {**record, "prompts": len(prompts), "bad_prompt_lines": counts})
        write_jsonl(path, ({"index": i, "prompt": p} for i, p in enumerate(prompts)))
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines()]


def shown_paths(ctx: StageContext, paths: list[Path]) -> list[str]:
    """Paths as the selection record shows them: relative to the run folder when inside it (a copied run reads
    the same)."""
    out = []
    for path in paths:
        try:
            out.append(str(Path(path).resolve().relative_to(ctx.run_dir.resolve())))
        except ValueError:
            out.append(str(path))
    return out


def selection_record(ctx: StageContext) -> dict[str, Any]:
    return read_json(ctx.stage_dir / SELECTION_FILE, {}) or {}


def chunk_units(count: int, size: int) -> list[str]:
    """Unit names of ``count`` prompts in chunks of ``size``: ``prompts-<first>-<last>``."""
    return [f"prompts-{s:05d}-{min(s + size, count) - 1:05d}" for s in range(0, count, size)]


def chunk_range(unit: str) -> range:
    _, first, last = unit.split("-")
    return range(int(first), int(last) + 1)


def chunk_file(ctx: StageContext, index: int, name: str) -> Path:
    return ctx.stage_dir / CHUNKS_DIR / f"{index:06d}.{name}"


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """One JSON object a line, written under a temporary name and renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def merge_chunk_files(ctx: StageContext, units: list[str], name: str, out: Path) -> int:
    """Concatenate every unit's chunk file ``name`` (absent: nothing) in unit order into ``out``; returns lines."""
    lines = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w", encoding="utf-8") as fh:
        for index in range(len(units)):
            part = chunk_file(ctx, index, name)
            if part.exists():
                text = part.read_text(encoding="utf-8")
                fh.write(text)
                lines += text.count("\n")
    return lines


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but CUDA is not available on this machine")
        return torch.device("cuda")
    return torch.device("cpu")


_LOADED: dict[tuple[str, str, str], Any] = {}


def load_stage_model(ctx: StageContext, path: Path, device_choice: str, dtype_name: str, threads: int) -> Any:
    """The model at ``path`` (:func:`lmhpc.exchange.load_model`), loaded once per process for all its units."""
    from lmhpc.exchange import load_model

    torch.set_num_threads(threads or max(ctx.cfg.resources_for(ctx.stage).cpus_per_task, 1))
    device = pick_device(device_choice)
    key = (str(path), str(device), dtype_name)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load_model(path, device=device, dtype=getattr(torch, dtype_name))
    return _LOADED[key]


def normalized(text: str) -> str:
    return " ".join(text.lower().split())
