"""Preemption plumbing shared by every stage.

The signal handler only sets a flag. Stages poll ``ctx.should_stop()`` at a step/unit boundary,
ranks agree on it with one collective, the stage saves its state and raises :class:`Preempted`;
the runner then requeues the job (SLURM: ``scontrol requeue`` by the job step's first process, at
most ``resources.<stage>.max_requeues`` times) or, locally, exits with :data:`REQUEUE_EXIT_CODE` so
the local executor starts the task again.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time

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
        self.time: float | None = None  # when it was set (wall clock)

    def install(self, signals: tuple[signal.Signals, ...] = PREEMPT_SIGNALS) -> PreemptionFlag:
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in signals:
            signal.signal(sig, self._handler)
        return self

    def _handler(self, signum: int, frame: object) -> None:
        # nothing but a flag here: no I/O, no collectives
        self.signal_name = signal.Signals(signum).name
        self.time = self.time or time.time()
        self._event.set()

    def set(self, reason: str = "manual") -> None:
        self.signal_name = reason
        self.time = self.time or time.time()
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def adopt(self, other: PreemptionFlag) -> PreemptionFlag:
        """Take over a signal ``other`` caught (the process's early flag, before this stage's flag existed);
        ``other`` is clear afterwards."""
        if other._event.is_set():
            self.signal_name = other.signal_name
            self.time = self.time or other.time
            self._event.set()
        other._event.clear()
        other.signal_name = other.time = None
        return self


_EARLY = PreemptionFlag()


def early_flag() -> PreemptionFlag:
    """The process's flag from its first line until a stage installs its own (:func:`stage_flag`).

    A batch job's process imports for seconds (submitit, torch, W&B) before a stage runs; a preemption
    signal in that window would otherwise kill it (the default action of SIGUSR2 and SIGTERM), leaving a
    FAILED job whose dependants SLURM cancels. :mod:`lmhpc.launch.entry` installs this flag first thing,
    and :class:`lmhpc.launch.slurm.StageJob` takes the signals back from submitit's handler before it
    imports anything heavy."""
    return _EARLY


def stage_flag() -> PreemptionFlag:
    """A fresh flag for one stage, installed, holding any signal the early flag caught (which is then
    cleared: a second stage run in the same process starts clean)."""
    flag = PreemptionFlag().install()
    flag.adopt(_EARLY)
    if flag._event.is_set():
        log.warning("a preemption signal (%s) arrived while the job was starting; the stage stops at its first "
                    "boundary", flag.signal_name)
    return flag


FAILED_EXIT_CODE = 1  # preempted but not requeued (budget spent, requeue refused): the job ends FAILED


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs for this job alone: ``<array job>_<task>`` for an array task,
    ``SLURM_JOB_ID`` otherwise. (The last task of an array shares its ``SLURM_JOB_ID`` with the array
    itself, and requeueing that id requeues every task of the array, finished ones included.)"""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """How many times SLURM has requeued this job (array task) so far."""
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def requeue_or_exit(stage: str, reason: str, max_requeues: int) -> int:
    """After a save on preemption: requeue the SLURM job and return the exit code every process of the
    job step returns (75 for a requeue, 1 when it must fail instead).

    The first process of the job step (``SLURM_PROCID == 0``) requeues its own job, or its own array
    task, whatever the stage's rank. Once the job was requeued ``max_requeues`` times
    (``SLURM_RESTART_COUNT``), nothing is requeued: the work that keeps being interrupted does not fit
    in the time limit, and an error names it (``reason``). Outside SLURM the local executor restarts the
    task and counts attempts itself.
    """
    job = slurm_job_id()
    if not job or os.environ.get("LMHPC_EXECUTOR") != "slurm":
        return REQUEUE_EXIT_CODE
    restarts = restart_count()
    if restarts >= max_requeues:
        log.error(
            "stage %s: preempted again (%s) after %d requeue(s) of SLURM job %s; resources.%s.max_requeues=%d "
            "is spent, so the job fails instead of requeueing: this work does not fit in the time limit "
            "(raise resources.%s.timeout_min, lower executor.signal_delay_s, or split the input into smaller units)",
            stage, reason, restarts, job, stage, max_requeues, stage,
        )
        return FAILED_EXIT_CODE
    if int(os.environ.get("SLURM_PROCID") or 0) != 0:
        return REQUEUE_EXIT_CODE
    log.warning("preempted: requeueing SLURM job %s (requeue %d of %d)", job, restarts + 1, max_requeues)
    try:
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        error = res.stderr.strip() if res.returncode != 0 else None
    except (OSError, subprocess.TimeoutExpired) as e:
        error = str(e)
    if error is not None:
        # exiting 75 without a requeue would leave a FAILED job that looks preempted: say why instead
        log.error("stage %s: scontrol requeue %s failed: %s", stage, job, error)
        return FAILED_EXIT_CODE
    return REQUEUE_EXIT_CODE
