"""Preemption with real signals: the stage saves at the next step boundary, exits with the requeue
code, and the restarted job continues with a bitwise identical loss curve."""

from __future__ import annotations

import signal
import time

import pytest

from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.timing import read_events
from lmhpc.train.checkpoint import complete_steps
from lmhpc.train.metrics import read_metrics
from tests.train.fixtures import tiny_pretrain

STEPS = 150


def _section(parallel: dict | None = None, mbs: int = 8) -> dict:
    # periodic checkpoints too, so a resume has to pick the preemption one, the newest
    return tiny_pretrain(train={"steps": STEPS, "micro_batch_size": mbs}, parallel=parallel or {},
                         checkpoint={"interval": 40, "keep_last": 2}, spike={"policy": "skip"})


def _rows(run) -> int:
    path = run.stage_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _interrupt(run, after_rows: int, sig: signal.Signals, ranks_to_signal: list[int]) -> int:
    """Start the job, signal some ranks once ``after_rows`` steps are logged, return the saved step."""
    procs = run.start()
    try:
        deadline = time.time() + 180
        while _rows(run) < after_rows:
            assert all(p.poll() is None for p in procs), f"the job ended before the signal\n{run.logs()}"
            assert time.time() < deadline, run.logs()
            time.sleep(0.02)
        for r in ranks_to_signal:
            procs[r].send_signal(sig)
        codes = [p.wait(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [REQUEUE_EXIT_CODE] * run.world, (codes, run.logs())
    saved = complete_steps(run.stage_dir / "checkpoints")[-1]
    assert after_rows <= saved < STEPS
    return saved


def test_signals_give_bitwise_identical_loss_curve(pretrain_run):
    reference = pretrain_run("uninterrupted", _section())
    assert reference.run() == [0], reference.logs()

    run = pretrain_run("interrupted", _section())
    first = _interrupt(run, 5, signal.SIGUSR1, [0])
    second = _interrupt(run, first + 5, signal.SIGTERM, [0])
    assert second > first
    assert run.run() == [0], run.logs()

    assert run.losses() == reference.losses()  # exact float equality, every step
    steps = [row["step"] for row in read_metrics(run.stage_dir / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))
    log = (run.run_dir / "rank0.log").read_text()  # all of it: with a step line per step, logs()' tail is too short
    assert f"resumed from checkpoint step {first}" in log and f"resumed from checkpoint step {second}" in log
    assert complete_steps(run.stage_dir / "checkpoints") == [120, STEPS]  # keep_last=2
    # each resume records how long restoring the checkpoint took (lmhpc status --timing)
    restored = [e for e in read_events(run.stage_dir) if e["event"] == "restored"]
    assert [e["step"] for e in restored] == [first, second] and all(e["seconds"] >= 0 for e in restored)


@pytest.mark.slow
def test_signal_to_one_rank_stops_all_ranks(pretrain_run):
    """fsdp2: only rank 1 gets SIGUSR2; the ranks agree, save together and resume identically."""
    section = _section({"dp_shard": 2}, mbs=4)
    reference = pretrain_run("uninterrupted2", section, world=2)
    assert reference.run() == [0, 0], reference.logs()

    run = pretrain_run("interrupted2", section, world=2)
    _interrupt(run, 5, signal.SIGUSR2, [1])
    assert run.run() == [0, 0], run.logs()
    assert run.losses() == reference.losses()


def _catches(pid: int, sig: signal.Signals) -> bool:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


def test_signal_before_the_first_step_saves_nothing_and_changes_nothing(pretrain_run):
    """A preemption signal while the job is still importing (``lmhpc stage`` keeps it from its first lines)
    stops the stage before step 1 without a checkpoint: a step-0 save would not be neutral (DCP fills an empty
    Adam state with a zero-lr step, which shifts the bias correction), so the next attempt starts over and its
    losses equal an uninterrupted run's."""
    reference = pretrain_run("uninterrupted", tiny_pretrain(train={"steps": 6}))
    assert reference.run() == [0], reference.logs()
    run = pretrain_run("early", tiny_pretrain(train={"steps": 6}))
    (proc,) = run.start()
    deadline = time.time() + 60
    while not _catches(proc.pid, signal.SIGUSR2):
        assert proc.poll() is None and time.time() < deadline, run.logs()
        time.sleep(0.005)
    assert _rows(run) == 0
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=180) == REQUEUE_EXIT_CODE, run.logs()
    assert complete_steps(run.stage_dir / "checkpoints") == []
    assert "before the first step: nothing to save" in run.logs()
    assert run.run() == [0], run.logs()
    assert run.losses() == reference.losses()
