"""GPTQ's calibration data: a seeded sample of token windows from Megatron ``.bin/.idx`` shards.

Like the GPTQ reference (random windows of C4), each window is ``seq_len`` consecutive tokens starting at a
uniformly drawn position of the shards' token stream (a window stays inside one shard and may span document
boundaries, end-of-document tokens included). Same shards, count, length and seed: same windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from lmhpc.tokenizer.indexed import bin_path, exists, idx_path, read_index


class CalibrationError(ValueError):
    """The calibration data is missing or too small; names the config key."""


def stage_prefixes(tokenize_dir: Path) -> list[Path]:
    """The shard prefixes of a tokenize stage folder: its ``blend.json``, else every ``*.idx`` in it."""
    blend = tokenize_dir / "blend.json"
    if blend.is_file():
        relative = json.loads(blend.read_text()).get("data_path_relative", [])
        return [tokenize_dir / p for p in relative[1::2]]
    return sorted(p.with_suffix("") for p in tokenize_dir.glob("*.idx"))


def sample_windows(prefixes: list[Path], sequences: int, seq_len: int, seed: int, vocab_size: int,
                   key: str = "quantize.calibration") -> torch.Tensor:
    """``sequences`` windows (N, seq_len) of token ids, drawn with ``seed``; ids must lie below ``vocab_size``."""
    if not prefixes:
        raise CalibrationError(f"{key}: no tokenized shards to calibrate on (chain the tokenize stage or set "
                               f"{key}.prefixes)")
    missing = [str(p) for p in prefixes if not exists(p)]
    if missing:
        raise CalibrationError(f"{key}.prefixes: {missing[0]}.bin/.idx does not exist")
    shards = []
    for prefix in prefixes:
        index = read_index(idx_path(prefix))
        shards.append(np.memmap(bin_path(prefix), dtype=index.dtype, mode="r"))
    starts_per_shard = np.array([max(len(s) - seq_len + 1, 0) for s in shards], dtype=np.int64)
    if starts_per_shard.sum() == 0:
        raise CalibrationError(f"{key}.seq_len: no shard holds {seq_len} tokens (largest: "
                               f"{max(len(s) for s in shards)})")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, int(starts_per_shard.sum()), size=sequences)
    bounds = np.cumsum(starts_per_shard)
    rows = []
    for pick in picks:
        shard = int(np.searchsorted(bounds, pick, side="right"))
        start = int(pick - (bounds[shard - 1] if shard else 0))
        rows.append(np.asarray(shards[shard][start:start + seq_len], dtype=np.int64))
    windows = torch.from_numpy(np.stack(rows))
    if int(windows.max()) >= vocab_size:
        raise CalibrationError(f"{key}: token id {int(windows.max())} is outside the model's vocabulary "
                               f"({vocab_size}): the shards were not made with its tokenizer")
    return windows
