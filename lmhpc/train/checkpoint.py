"""Checkpoints: torch.distributed.checkpoint (DCP) step folders with a completion marker.

``checkpoints/step-<N>/`` holds the DCP shards of the model and optimizer (parameter names are the
model's global names, so a checkpoint loads on another world size or another parallel layout: DCP
reshards), ``train_state.json`` (step, data position, spike-guard history) and one RNG state per
rank; ``COMPLETE`` is written last, by rank 0, once every rank has finished. Resume picks the newest
folder with the marker; folders without it are ignored and removed. Saves may be asynchronous
(``dcp.async_save``): the marker is then written when the save has finished on every rank, at the
next save or at the end, and a preemption save is always synchronous.

A checkpoint folder is trusted input: DCP's ``.metadata`` file is a pickle, which can run code when
it is loaded, so resume only from folders this project (or someone you trust) wrote. The RNG files
hold tensors only and are loaded with ``torch.load(weights_only=True)``, which refuses anything else.
"""

from __future__ import annotations

import logging
import re
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmhpc.fsutil import read_json, write_json

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
TRAIN_STATE = "train_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_OPTIM = StateDictOptions(flatten_optimizer_state_dict=True)


def step_dir(folder: Path, step: int) -> Path:
    return folder / f"step-{step}"


def complete_steps(folder: Path) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    if not folder.is_dir():
        return []
    steps = []
    for child in folder.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / COMPLETE_MARKER).exists():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_step(folder: Path) -> int | None:
    steps = complete_steps(folder)
    return steps[-1] if steps else None


@dataclass
class _Pending:
    step: int
    future: Future
    train_state: dict[str, Any]


class CheckpointManager:
    """Saves and restores model parts, their optimizers, the train state and every rank's RNG."""

    def __init__(self, folder: Path, model_parts: list[nn.Module], optimizers: list[torch.optim.Optimizer],
                 keep_last: int = 2, async_save: bool = False) -> None:
        self.folder = folder
        self.model_parts = model_parts
        self.optimizers = optimizers
        self.keep_last = keep_last
        self.async_save = async_save
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        # asynchronous saves finish in a background thread: their collectives get a group of their
        # own, so they never interleave with the training step's collectives on the default group
        self.group = dist.new_group(backend="gloo") if async_save and dist.is_initialized() else None
        self.pending: _Pending | None = None
        self.saves = 0
        self.save_seconds = 0.0

    def _state_dict(self) -> dict[str, Any]:
        model: dict[str, Any] = {}
        optim: dict[str, Any] = {}
        for part, opt in zip(self.model_parts, self.optimizers):
            model.update(get_model_state_dict(part))
            optim.update(get_optimizer_state_dict(part, opt, options=_OPTIM))
        return {"model": model, "optim": optim}

    def save(self, step: int, train_state: dict[str, Any], synchronous: bool = False) -> Path:
        """Collective: every rank calls this at the same step."""
        import time

        t0 = time.time()
        self.finish_pending()
        path = step_dir(self.folder, step)
        if self.rank == 0 and path.exists():
            shutil.rmtree(path)  # an incomplete leftover of an earlier attempt
        _barrier()
        path.mkdir(parents=True, exist_ok=True)
        save_rng_state(path / f"rng-rank{self.rank:05d}.pt")
        state = self._state_dict()
        if self.async_save and not synchronous:
            future = dcp.async_save(state, checkpoint_id=str(path), process_group=self.group)
            self.pending = _Pending(step, future, dict(train_state))
        else:
            dcp.save(state, checkpoint_id=str(path))
            self._complete(step, train_state)
        self.saves += 1
        self.save_seconds += time.time() - t0
        return path

    def finish_pending(self) -> None:
        """Collective: wait for an asynchronous save and mark it complete."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        pending.future.result()
        self._complete(pending.step, pending.train_state)

    def _complete(self, step: int, train_state: dict[str, Any]) -> None:
        _barrier()
        path = step_dir(self.folder, step)
        if self.rank == 0:
            write_json(path / TRAIN_STATE, train_state)
            write_json(path / COMPLETE_MARKER, {"step": step})
            self._purge(step)
        _barrier()
        if self.rank == 0:
            log.info("checkpoint step %d saved: %s", step, path)

    def _purge(self, newest: int) -> None:
        keep = set(complete_steps(self.folder)[-self.keep_last:])
        for child in self.folder.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and int(match.group(1)) not in keep and int(match.group(1)) <= newest:
                shutil.rmtree(child, ignore_errors=True)

    def load(self, step: int) -> dict[str, Any]:
        """Collective: restore model, optimizer and this rank's RNG from ``step``; returns the train state."""
        path = step_dir(self.folder, step)
        state = self._state_dict()
        dcp.load(state, checkpoint_id=str(path))
        for part, opt in zip(self.model_parts, self.optimizers):
            own_model = get_model_state_dict(part)
            set_model_state_dict(part, {k: state["model"][k] for k in own_model})
            own_optim = get_optimizer_state_dict(part, opt, options=_OPTIM)
            set_optimizer_state_dict(part, opt, {k: state["optim"][k] for k in own_optim}, options=_OPTIM)
        rng_file = path / f"rng-rank{self.rank:05d}.pt"
        if not rng_file.exists():  # a different world size: ranks beyond the old ones take rank 0's
            rng_file = path / "rng-rank00000.pt"
        restore_rng_state(rng_file)
        train_state = read_json(path / TRAIN_STATE)
        if self.rank == 0:
            log.info("resumed from checkpoint step %d (%s)", step, path)
        return train_state


def save_rng_state(path: Path) -> None:
    """This process's CPU and CUDA generator states, as byte tensors (nothing a weights-only load refuses)."""
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, path)


def restore_rng_state(path: Path) -> None:
    """Set the generators from :func:`save_rng_state`'s file; a weights-only load, so a file holding
    anything but tensors and plain containers is refused (``pickle.UnpicklingError``), never run."""
    rng = torch.load(path, weights_only=True)
    torch.set_rng_state(rng["torch"])
    cuda = rng.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
