"""GPTQ on one linear layer with correlated (ill-conditioned) inputs: lower output error than RTN."""

from __future__ import annotations

import pytest
import torch

from lmhpc.quantize.gptq import HessianAccumulator, gptq_quantize
from lmhpc.quantize.rtn import dequantize, quantize


def correlated_inputs(tokens: int, width: int, rank: int, seed: int = 0) -> torch.Tensor:
    """Inputs near a low-rank subspace plus a little noise: a Hessian with a wide spread of eigenvalues."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, width, generator=g)
    return torch.randn(tokens, rank, generator=g) @ basis + 0.05 * torch.randn(tokens, width, generator=g)


def output_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((x @ w.T - x @ w_hat.T).norm())


@pytest.mark.parametrize("bits,group,kwargs", [(4, 32, {}), (3, 32, {}), (4, None, {"act_order": True}),
                                               (3, 32, {"act_order": True, "static_groups": True}),
                                               (4, 32, {"block_size": 16, "symmetric": True})])
def test_gptq_output_error_is_below_rtn(bits, group, kwargs):
    torch.manual_seed(0)
    x = correlated_inputs(512, 128, rank=16)
    w = torch.randn(48, 128) * 0.1
    acc = HessianAccumulator(128)
    for chunk in x.split(100):
        acc.add(chunk)
    assert torch.allclose(acc.hessian, 2 * x.double().T @ x.double() / 512)
    symmetric = kwargs.get("symmetric", False)
    q = gptq_quantize(w, acc.hessian, bits=bits, group_size=group, **kwargs)
    assert q.codes.shape == w.shape and int(q.codes.max()) <= 2 ** bits - 1
    rtn = output_error(x, w, dequantize(quantize(w, bits, group, symmetric)))
    gptq = output_error(x, w, dequantize(q))
    assert gptq < 0.6 * rtn, (gptq, rtn)


def test_gptq_bad_arguments_fail_naming_them():
    w, h = torch.zeros(8, 64), torch.eye(64)
    with pytest.raises(ValueError, match="group_size=48"):
        gptq_quantize(w, h, group_size=48)
    with pytest.raises(ValueError, match="bits=5"):
        gptq_quantize(w, h, bits=5)
    with pytest.raises(ValueError, match="static_groups"):
        gptq_quantize(w, h, group_size=32, act_order=True)
    with pytest.raises(ValueError, match="hessian shape"):
        gptq_quantize(w, torch.eye(32), group_size=32)


def test_gptq_with_identity_hessian_is_rtn():
    """Uncorrelated unit inputs leave no error to spread: GPTQ's codes are round-to-nearest's."""
    torch.manual_seed(2)
    w = torch.randn(16, 64)
    q = gptq_quantize(w, torch.eye(64), bits=3, group_size=16, damp=0.0)
    r = quantize(w, 3, 16)
    assert torch.equal(q.codes, r.codes) and torch.allclose(q.scales, r.scales)
