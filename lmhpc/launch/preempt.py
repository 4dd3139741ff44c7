"""Preemption plumbing shared by every stage.

The signal handler only sets a flag. Stages poll ``ctx.should_stop()`` at a step/unit boundary,
ranks agree on it with one collective, the stage saves its state and raises :class:`Preempted`;
the runner then requeues the job (SLURM: ``scontrol requeue``) or, locally, exits with
:data:`REQUEUE_EXIT_CODE` so the local executor starts the task again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

log = logging.getLogger(__name__)

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"
PREEMPT_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


class Preempted(Exception):
    """Raised by a stage after it saved its state because a preemption signal arrived."""


class PreemptionFlag:
    """Set by a signal; read at step boundaries. Installing it replaces earlier handlers."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def install(self, signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> PreemptionFlag:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in signals:
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: object) -> None:
        # nothing but a flag here: no I/O, no collectives
        self.signal_name = signal.Signals(signum).name
        self._event.set()

    def set(self, reason: str = "manual") -> None:
        self.signal_name = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs. Array tasks have their own ``SLURM_JOB_ID`` too, which
    (unlike ``<array job>_<task>`` for throttled arrays) scontrol always accepts."""
    return os.environ.get("SLURM_JOB_ID")


def requeue_or_exit(rank: int) -> int:
    """After a save on preemption: requeue the SLURM job (rank 0 only) and return the exit code."""
    job = slurm_job_id()
    if job and os.environ.get("LMHPC_EXECUTOR") == "slurm":
        if rank == 0:
            log.warning("preempted: requeueing SLURM job %s", job)
            res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if res.returncode != 0:
                log.error("scontrol requeue %s failed: %s", job, res.stderr.strip())
        return REQUEUE_EXIT_CODE
    return REQUEUE_EXIT_CODE
