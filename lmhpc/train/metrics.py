"""Throughput, MFU and memory: tokens/s from wall time, FLOPs per token from the model, peak from the device.

MFU follows torchtitan / PaLM: ``flops_per_token × tokens/s per device / peak``, against the dense
BF16 peak of the GPU (FP8 runs are labelled, not re-based). CPUs have no reliable peak figure, so
there is no MFU on CPU unless ``pretrain.metrics.peak_tflops`` gives one.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

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
