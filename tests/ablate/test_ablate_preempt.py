"""Preemption inside a variant: a signal while its probe trains saves a checkpoint and exits with the requeue
code; the restarted task skips the variant's finished data steps, resumes the probe from that checkpoint, and
every loss and score equals an uninterrupted run's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.train.checkpoint import complete_steps
from tests.ablate.ablate_setup import ablation_config, tokenizer_model
from tests.conftest import write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STEPS = 40


def _stage(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmhpc", "stage", "ablate", str(config), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(config: Path, *args: str) -> None:
    proc = _stage(config, *args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]


def _losses(run_dir: Path, variant: str) -> list[float]:
    path = run_dir / "ablate" / "variants" / variant / "probe" / "metrics.jsonl"
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


def _scores(run_dir: Path, variant: str) -> tuple:
    row = json.loads((run_dir / "ablate" / "variants" / variant / "evaluate" / "result.json").read_text())
    items = json.loads((run_dir / "ablate" / "variants" / variant / "evaluate" / "items.json").read_text())
    return row["perplexity"]["held"]["bits_per_byte"], row["tasks"]["mine"]["acc"], items


def test_signal_while_the_probe_trains_resumes_identically(tmp_path):
    data = ablation_config(tmp_path, name="pre", tokenizer=str(tokenizer_model(tmp_path / "sp")), tasks=1)
    data["ablate"].update(without=[], sources=False, mixes={})
    data["ablate"]["probe"]["train"]["steps"] = STEPS
    config = write_config(tmp_path / "pre.yaml", data)
    _finish(config, "run.name=ref")  # uninterrupted reference (units and finalize in one process)

    run_dir = tmp_path / "runs" / "pre"
    metrics = run_dir / "ablate" / "variants" / "baseline" / "probe" / "metrics.jsonl"
    proc = _stage(config, "--task", "0", "--num-tasks", "1")
    try:
        deadline = time.time() + 300
        while not metrics.exists() or len(metrics.read_text().splitlines()) < 5:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.time() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR2)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == REQUEUE_EXIT_CODE, out[-4000:]
    saved = complete_steps(metrics.parent / "checkpoints")
    assert saved and 5 <= saved[-1] < STEPS, saved
    assert not (run_dir / "ablate" / "_units" / "000000.json").exists()  # the variant is not done

    _finish(config, "--task", "0", "--num-tasks", "1")
    _finish(config, "--finalize")
    log = (run_dir / "ablate" / "variants" / "baseline" / "probe" / "metrics.jsonl").read_text()
    assert len(log.splitlines()) == STEPS
    ref_dir = tmp_path / "runs" / "ref"
    for variant in ("baseline", "without_dedup"):
        assert _losses(run_dir, variant) == _losses(ref_dir, variant)  # exact, every step
        assert _scores(run_dir, variant) == _scores(ref_dir, variant)
    comparison = json.loads((run_dir / "ablate" / "comparison.json").read_text())
    reference = json.loads((ref_dir / "ablate" / "comparison.json").read_text())
    assert [v["scores"] for v in comparison["variants"]] == [v["scores"] for v in reference["variants"]]
