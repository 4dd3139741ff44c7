"""The stages a run can chain, in order, with how each one is placed on ranks.

kinds:
- ``array``: independent units (input shards) spread over tasks (``rank::world``): a SLURM array or
  local subprocesses, then one finalize step that merges the per-unit stats. The module defines
  ``units(ctx) -> list[str]``, ``process_unit(ctx, index, unit) -> dict`` and optionally
  ``finalize(ctx, stats) -> dict``.
- ``mpi``: one job of N MPI ranks that talk (``mpiexec -n N`` / ``srun --mpi=pmi2``); ``run(ctx) -> dict``.
- ``torch``: one job of N torch.distributed processes (N local processes with RANK/WORLD_SIZE set / one SLURM
  task per GPU with submitit's TorchDistributedEnvironment).
- ``single``: one process.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

StageKind = Literal["array", "mpi", "torch", "single"]


@dataclass(frozen=True)
class StageSpec:
    name: str
    module: str
    kind: StageKind
    reads: tuple[str, ...] = ()  # stages whose output this one reads

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("curate", "lmhpc.curate.stage", "array"),
        StageSpec("dedup", "lmhpc.dedup.stage", "mpi", reads=("curate",)),
        StageSpec("tokenizer", "lmhpc.tokenizer.train_stage", "single", reads=("dedup",)),
        StageSpec("tokenize", "lmhpc.tokenizer.tokenize_stage", "array", reads=("dedup", "tokenizer")),
        StageSpec("pretrain", "lmhpc.train.stage", "torch", reads=("tokenize", "tokenizer")),
    )
}
STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def ordered(names: list[str]) -> list[str]:
    """The given stage names in pipeline order."""
    return [s for s in STAGE_ORDER if s in names]
