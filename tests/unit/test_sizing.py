"""The sizing model against what the code does (tiny shapes; bench/sizing.py checks larger ones and timings)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer, count_params
from lmhpc.sizing import (
    ClusterPlan,
    Layout,
    activation_bytes_per_token,
    checkpoint_bytes,
    checkpoint_interval_seconds,
    param_count,
    size,
    training_memory,
)

SHAPES = [
    ModelArgs(vocab_size=500, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
    ModelArgs(vocab_size=700, dim=96, n_layers=3, n_heads=6, n_kv_heads=6, max_seq_len=64, tie_embeddings=True),
    ModelArgs(vocab_size=300, dim=128, n_layers=2, n_heads=8, n_kv_heads=1, ffn_hidden=320, max_seq_len=64),
]


@pytest.mark.parametrize("args", SHAPES)
def test_param_count_is_exact(args):
    assert param_count(args) == count_params(Transformer(args))


def _saved_bytes(model: Transformer, tokens: torch.Tensor) -> int:
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in skip:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    return sum(seen.values())


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
@pytest.mark.parametrize("args", SHAPES)
def test_activation_formula_matches_saved_tensors(args, precision, dtype):
    torch.manual_seed(0)
    model = Transformer(args).to(dtype)
    batch, seq = 2, 48
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1))
    per = activation_bytes_per_token(args, precision)
    predicted = batch * seq * (args.n_layers * per["block"] + per["head"] + per["loss"])
    measured = _saved_bytes(model, tokens)
    assert abs(predicted / measured - 1) < 0.2, (predicted, measured)


def test_training_state_equals_model_and_optimizer_tensors():
    args = SHAPES[0]
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, args.vocab_size, (2, 17))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    measured = sum(p.nbytes + p.grad.nbytes for p in model.parameters())
    measured += sum(v.nbytes for s in opt.state.values() for v in s.values() if v.dim() > 0)
    assert training_memory(args, 16, 2, Layout(), "fp32")["state_bytes"] == measured
    # sharding divides the state; full recompute keeps less than none
    two = training_memory(args, 16, 2, Layout(dp_shard=2), "fp32")
    assert two["state_bytes"] == measured / 2
    none = training_memory(args, 64, 4, Layout(), "bf16", recompute="none")["activation_bytes"]
    full = training_memory(args, 64, 4, Layout(), "bf16", recompute="full")["activation_bytes"]
    assert full < none


def test_checkpoint_bytes_match_a_saved_checkpoint(tmp_path):
    from lmhpc.train.checkpoint import CheckpointManager

    args = ModelArgs(vocab_size=2000, dim=128, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, args.vocab_size, (2, 17))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    saved = CheckpointManager(tmp_path / "checkpoints", [model], [opt], 1, False).save(1, {"step": 1},
                                                                                         synchronous=True)
    on_disk = sum(f.stat().st_size for f in saved.rglob("*") if f.is_file())
    assert abs(checkpoint_bytes(args) / on_disk - 1) < 0.05


def test_checkpoint_interval_minimises_expected_overhead():
    save_s, mtbp = 60.0, 12 * 3600.0

    def overhead(interval):  # save time per interval + half an interval lost per preemption
        return save_s / interval + interval / (2 * mtbp)

    best = checkpoint_interval_seconds(save_s, mtbp)
    grid = [best * f for f in (0.5, 0.8, 1.25, 2.0)]
    assert all(overhead(best) <= overhead(t) for t in grid)
    assert math.isclose(best, math.sqrt(2 * save_s * mtbp))


def test_70b_plan_and_cli():
    result = size(ClusterPlan())
    assert 69e9 < result["model"]["params"] < 72e9
    assert result["memory_per_rank_gb"]["fits"]
    out = subprocess.run([sys.executable, "-m", "lmhpc", "size", "--recompute", "none", "--pp", "1", "--tp", "1",
                          "--dp-shard", "8"], capture_output=True, text=True, check=True).stdout
    assert "does NOT fit" in out  # 70B with no model parallelism on 8 GPUs
