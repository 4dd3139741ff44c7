"""Throughput, MFU and memory: tokens/s from wall time, FLOPs per token from the model, peak from the device.

MFU follows torchtitan / PaLM: ``flops_per_token × tokens/s per device / peak``, against the dense
BF16 peak of the GPU (FP8 runs are labelled, not re-based). CPUs have no reliable peak figure, so
there is no MFU on CPU unless ``pretrain.metrics.peak_tflops`` gives one.

:class:`StepLog` writes the line a person follows in the job's log, from rank 0 only.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("lmhpc.pretrain")

# dense BF16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name()
GPU_BF16_PEAK = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def device_peak_flops(device: torch.device, override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override, else the GPU table; None where unknown (CPU)."""
    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_BF16_PEAK:
            if key in name:
                return peak
    return None


def memory_stats(device: torch.device) -> dict[str, float]:
    """Peak accelerator memory (GiB) on GPU; the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return {"max_allocated_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "max_reserved_gib": torch.cuda.max_memory_reserved(device) / 2**30}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"max_rss_gib": rss / (2**30 if sys.platform == "darwin" else 2**20)}


def throughput(tokens: int, seconds: float, world_size: int, flops_per_token: float,
               peak: float | None) -> dict[str, float | None]:
    """tokens/s (all ranks), tokens/s per device, achieved TFLOP/s per device and MFU (%)."""
    tps = tokens / seconds if seconds > 0 else 0.0
    per_device = tps / world_size
    achieved = flops_per_token * per_device
    return {
        "tokens_per_s": tps,
        "tokens_per_s_per_device": per_device,
        "tflops_per_device": achieved / 1e12,
        "mfu_pct": 100.0 * achieved / peak if peak else None,
    }


def format_duration(seconds: float) -> str:
    """``1h02m``, ``4m05s`` or ``12s``."""
    total = max(int(round(seconds)), 0)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def memory_text(stats: dict[str, float]) -> str:
    """:func:`memory_stats` in a few words."""
    if "max_allocated_gib" in stats:
        return f"mem {stats['max_allocated_gib']:.1f}/{stats['max_reserved_gib']:.1f} GiB (peak alloc/reserved)"
    return f"mem {stats['max_rss_gib']:.2f} GiB (peak rss)"


class StepLog:
    """The step line: on rank 0 only, every ``log_every`` steps and at the last step, e.g.

    ``step 40/1000 | loss 3.2145 | grad norm 0.82 | lr 3.0e-04 | 12,345 tok/s | MFU 41.2% |
    mem 35.1/38.0 GiB (peak alloc/reserved) | ETA 1h02m``

    tokens/s and MFU cover the wall time since the previous line (whole iterations: data, step and
    checkpoint saves). The ETA is the remaining steps times the mean step time since this process
    started, the first step (warm-up, compilation) left out once there are others.
    """

    def __init__(self, total_steps: int, log_every: int, tokens_per_step: int, world_size: int,
                 flops_per_token: float, peak: float | None, device: torch.device, enabled: bool = True) -> None:
        self.total_steps = total_steps
        self.log_every = max(log_every, 1)
        self.tokens_per_step = tokens_per_step
        self.world_size = world_size
        self.flops_per_token = flops_per_token
        self.peak = peak
        self.device = device
        self.enabled = enabled
        self._first_seconds: float | None = None
        self._rest_seconds = 0.0
        self._rest_steps = 0
        self._interval_seconds = 0.0
        self._interval_steps = 0

    def due(self, step: int) -> bool:
        """Whether finished step ``step`` (counted from 1) gets a line."""
        return step % self.log_every == 0 or step == self.total_steps

    def mean_step_seconds(self) -> float | None:
        """Mean wall time of a step, warm-up left out; None before the first step."""
        if self._rest_steps:
            return self._rest_seconds / self._rest_steps
        return self._first_seconds

    def step_done(self, step: int, seconds: float, loss: float, grad_norm: float, lr: float,
                  applied: bool = True) -> str | None:
        """Record finished step ``step`` (counted from 1) that took ``seconds``; logs and returns its
        line when it is due on this rank, else None."""
        if self._first_seconds is None:
            self._first_seconds = seconds
        else:
            self._rest_seconds += seconds
            self._rest_steps += 1
        self._interval_seconds += seconds
        self._interval_steps += 1
        if not self.due(step):
            return None
        rate = throughput(self.tokens_per_step * self._interval_steps, self._interval_seconds, self.world_size,
                          self.flops_per_token, self.peak)
        self._interval_seconds, self._interval_steps = 0.0, 0
        if not self.enabled:
            return None
        mfu = rate["mfu_pct"]
        mean = self.mean_step_seconds() or 0.0
        parts = [f"step {step}/{self.total_steps}", f"loss {loss:.4f}", f"grad norm {grad_norm:.3g}", f"lr {lr:.2e}",
                 f"{rate['tokens_per_s']:,.0f} tok/s", f"MFU {mfu:.1f}%" if mfu is not None else "MFU n/a",
                 memory_text(memory_stats(self.device)),
                 f"ETA {format_duration(max(self.total_steps - step, 0) * mean)}"]
        if not applied:
            parts.append("update skipped (loss spike)")
        line = " | ".join(parts)
        log.info("%s", line)
        return line


class MetricsFile:
    """``metrics.jsonl``: one line per logged step (rank 0). A resumed run drops the lines after its
    checkpoint, so the file is the loss curve of the run as if it had never stopped."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        lines = []
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip() and json.loads(line)["step"] <= resume_step:
                    lines.append(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
        self.handle = open(path, "a")

    def write(self, row: dict[str, Any]) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
