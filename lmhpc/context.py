"""What a stage knows about where it runs: rank, world, folders, tracker, preemption flag."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmhpc.launch.preempt import PreemptionFlag
from lmhpc.track import Tracker

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

DONE_MARKER = "DONE"


@dataclass
class StageContext:
    """Passed to every stage function. The same stage code runs with 1 rank or 1,000."""

    cfg: RunConfig
    stage: str
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    tracker: Tracker = field(default_factory=Tracker)
    flag: PreemptionFlag = field(default_factory=PreemptionFlag)
    comm: Any = None  # mpi4py communicator for MPI stages
    input_dirs: dict[str, Path] | None = None  # default: the registry's ``reads`` of this stage, in the run
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("lmhpc.stage"))

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir

    @property
    def stage_dir(self) -> Path:
        return self.cfg.run_dir / self.stage

    @property
    def attempt(self) -> int:
        """0 on the first attempt, then how many times the job was requeued."""
        return int(os.environ.get("SLURM_RESTART_COUNT") or os.environ.get("LMHPC_ATTEMPT") or 0)

    @property
    def inputs(self) -> dict[str, Path]:
        """The folders of the stages this stage reads (its spec's ``reads`` under this config), by name."""
        if self.input_dirs is None:
            from lmhpc.stages import STAGES

            self.input_dirs = {name: self.cfg.run_dir / name for name in STAGES[self.stage].reads_for(self.cfg)}
        return self.input_dirs

    def stage_output(self, stage: str) -> Path:
        """The folder of an earlier stage; it must be complete."""
        path = self.inputs.get(stage) or self.cfg.run_dir / stage
        if not (path / DONE_MARKER).exists():
            raise RuntimeError(f"stage '{self.stage}' needs the output of '{stage}', which is not complete: {path}")
        return path

    def event(self, name: str, **fields: Any) -> None:
        """Record a timing event of this stage (rank 0 only), e.g. ``restored`` with its ``seconds``
        (``lmhpc status --timing`` reads them; see :mod:`lmhpc.timing`)."""
        if self.rank == 0:
            from lmhpc.timing import record_event

            record_event(self.stage_dir, name, attempt=self.attempt, **fields)

    def should_stop(self) -> bool:
        """True once a preemption signal arrived on this rank (stages agree across ranks themselves,
        e.g. with :meth:`agree_stop`)."""
        return self.flag.is_set()

    def agree_stop(self) -> bool:
        """Collective: True on every rank if any rank got a preemption signal."""
        local = self.flag.is_set()
        if self.comm is not None:
            from mpi4py import MPI

            return bool(self.comm.allreduce(int(local), op=MPI.MAX))
        if "torch.distributed" not in sys.modules:
            return local  # no process group can exist; do not pay torch's import for nothing
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                import torch

                t = torch.tensor([int(local)])
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                return bool(t.item())
        except ImportError:
            pass
        return local
