"""Logs a person can follow: the step line (rank 0 only, every ``log_every`` steps, with loss, tokens/s,
MFU, memory and ETA), and megatron-core's import-time warnings and info lines kept out of the log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmhpc.train.metrics import StepLog, format_duration
from tests.train.fixtures import tiny_pretrain

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"step (\d+)/(\d+) \| loss [\d.]+ \| grad norm \S+ \| lr \S+ \| [\d,]+ tok/s \| "
                       r"MFU (n/a|[\d.]+%) \| mem [\d.]+(/[\d.]+)? GiB \(peak [a-z/]+\) \| ETA (\d+h)?(\d+m)?\d*s?")
MEGATRON_NOISE = re.compile(r"megatron|transformer engine|apex", re.IGNORECASE)


def test_step_line_fields_eta_and_interval_throughput(caplog) -> None:
    log = StepLog(total_steps=10, log_every=2, tokens_per_step=1000, world_size=2, flops_per_token=1e9,
                  peak=1e12, device=torch.device("cpu"))
    with caplog.at_level("INFO", logger="lmhpc.pretrain"):
        assert log.step_done(1, 5.0, 2.5, 1.0, 1e-3) is None  # not due; warm-up step
        line = log.step_done(2, 1.0, 2.25, 0.5, 1e-3)
        assert log.step_done(3, 3.0, 2.0, 0.5, 1e-3) is None
        later = log.step_done(4, 1.0, 1.9, 0.5, 1e-3, applied=False)
    assert line is not None and STEP_LINE.search(line), line
    # 2 steps of 1000 tokens in 6 s; per device 1000/6 tok/s × 1 GFLOP = 0.1667 TFLOP/s of 1: 16.7%
    assert "333 tok/s" in line and "MFU 16.7%" in line
    assert "ETA 8s" in line  # 8 steps left × 1 s (the first step left out of the mean)
    assert later is not None and "500 tok/s" in later and "ETA 10s" in later  # 6 left × mean(1, 3, 1) s
    assert later.endswith("update skipped (loss spike)")
    assert [r.getMessage() for r in caplog.records] == [line, later]


def test_last_step_logged_and_other_ranks_silent(caplog) -> None:
    cpu = torch.device("cpu")
    rank0 = StepLog(5, 4, 10, 1, 1.0, None, cpu)
    rank1 = StepLog(5, 4, 10, 1, 1.0, None, cpu, enabled=False)
    with caplog.at_level("INFO", logger="lmhpc.pretrain"):
        lines = [rank0.step_done(s, 0.1, 1.0, 1.0, 1e-3) for s in range(1, 6)]
        assert all(rank1.step_done(s, 0.1, 1.0, 1.0, 1e-3) is None for s in range(1, 6))
    assert [i + 1 for i, line in enumerate(lines) if line] == [4, 5]
    assert "MFU n/a" in lines[3] and "ETA 0s" in lines[4]
    assert len(caplog.records) == 2


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59.6, "1m00s"), (245, "4m05s"), (3720, "1h02m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_two_rank_run_logs_step_lines_from_rank_zero_only(pretrain_run) -> None:
    run = pretrain_run("steplog", tiny_pretrain(train={"steps": 6, "micro_batch_size": 2}, parallel={"dp_shard": 2},
                                                 metrics={"log_every": 2}), world=2)
    assert run.run() == [0, 0], run.logs()
    rank0, rank1 = ((run.run_dir / f"rank{r}.log").read_text() for r in range(2))
    steps = [int(m.group(1)) for m in STEP_LINE.finditer(rank0)]
    assert steps == [2, 4, 6], rank0
    assert all(m.group(2) == "6" for m in STEP_LINE.finditer(rank0))
    assert "ETA 0s" in rank0.splitlines()[[i for i, x in enumerate(rank0.splitlines()) if "step 6/6" in x][0]]
    assert "step 2/6" not in rank1 and not STEP_LINE.search(rank1), rank1
    # the train package's own info lines come from rank 0 only
    assert not re.search(r"INFO \[lmhpc\.train\.\S+ r1\]", rank1), rank1
    for text in (rank0, rank1):
        assert not [line for line in text.splitlines() if MEGATRON_NOISE.search(line)], text


_IMPORT_CHECK = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from lmhpc.train import data
out = Path(sys.argv[2])
if sys.argv[1] == "write":
    docs = data.synthetic_tokens(64, 20, 50, seed=0, eod=1)
    data.write_indexed_dataset(out / "part", docs, 64)
else:
    batches = data.GlobalBatches([str(out / "part")], None, 16, 4, 40, 0, out / "cache", data.TokenIds(64, 1))
    assert len(batches.dataset) > 0
print("ok")
"""


def test_megatron_imports_print_no_warnings_or_info(tmp_path: Path) -> None:
    """Both places that import megatron-core (writing and reading the data), each first in a fresh
    process whose root logger takes everything and whose warnings are all shown."""
    for mode in ("write", "read"):
        proc = subprocess.run([sys.executable, "-W", "default", "-c", _IMPORT_CHECK, mode, str(tmp_path)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
        noise = [line for line in proc.stderr.splitlines() if MEGATRON_NOISE.search(line)]
        assert not noise, proc.stderr
