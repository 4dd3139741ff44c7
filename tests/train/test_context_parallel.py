"""Context parallel, the parts that run on one CPU process: which implementation a run gets, that
PyTorch's ring attention (GPU only) lays the sequence out as lmhpc cuts the data, and that its
attention function is plain causal attention when no context is active. The multi-rank CP parity
runs are in test_parallel_parity.py (all-gather-KV on gloo); ring attention itself is checked on a
GPU by tools/gpu_check_pretrain.py --cp."""

from __future__ import annotations

import pytest
import torch

from lmhpc.model.transformer import causal_attention
from lmhpc.train.parallel import load_balanced_chunks, resolve_cp_impl, ring_attention


def test_auto_picks_ring_attention_on_cuda_only():
    assert resolve_cp_impl("auto", "cuda") == "dtensor"
    assert resolve_cp_impl("auto", "cpu") == "allgather_kv"
    assert resolve_cp_impl("allgather_kv", "cuda") == "allgather_kv"
    assert resolve_cp_impl("auto", "cuda", compiled=True) == "allgather_kv"
    with pytest.raises(RuntimeError, match="needs CUDA GPUs.*cp_impl=allgather_kv"):
        resolve_cp_impl("dtensor", "cpu")


@pytest.mark.parametrize("seq_len, cp", [(16, 2), (64, 4), (96, 3), (8, 4)])
def test_torch_head_tail_layout_is_ours(seq_len, cp):
    from torch.distributed.tensor.experimental._attention import _HeadTailLoadBalancer

    order = _HeadTailLoadBalancer(seq_len, cp, "cpu")._generate_indices().flatten()
    ours = torch.cat([load_balanced_chunks(seq_len, cp, r) for r in range(cp)])
    assert torch.equal(order, ours)
    # each rank's half-chunks are its own and cover the sequence once
    assert sorted(ours.tolist()) == list(range(seq_len))


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_ring_attention_without_a_context_is_causal_attention(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 10, 8, generator=g, requires_grad=True)
    k = torch.randn(2, kv_heads, 10, 8, generator=g, requires_grad=True)
    v = torch.randn(2, kv_heads, 10, 8, generator=g, requires_grad=True)
    out = ring_attention(q, k, v, None)
    ref = causal_attention(q, k, v, None)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
