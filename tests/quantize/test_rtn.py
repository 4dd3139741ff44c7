"""Round-to-nearest: dequantize(quantize(w)) within half a scale, codes in range, bad arguments named."""

from __future__ import annotations

import pytest
import torch

from lmhpc.quantize.rtn import dequantize, quantize


@pytest.mark.parametrize("bits,group,symmetric", [(8, None, True), (8, None, False), (4, 32, False),
                                                  (4, 32, True), (3, 16, False), (3, 16, True), (2, 64, False)])
def test_rtn_error_is_within_half_a_scale(bits, group, symmetric):
    torch.manual_seed(0)
    w = torch.randn(24, 128) * torch.linspace(0.1, 3.0, 128)
    q = quantize(w, bits=bits, group_size=group, symmetric=symmetric)
    assert int(q.codes.max()) <= 2 ** bits - 1 and q.codes.dtype == torch.uint8
    groups = 1 if group is None else 128 // group
    assert q.scales.shape == (24, groups) == q.zeros.shape
    err = (w - dequantize(q)).abs().reshape(24, groups, -1)
    assert bool((err <= q.scales[..., None] / 2 + 1e-6 * w.abs().max()).all())  # float32 rounding at the edge
    assert float(err.max()) > 0  # rounding did happen


def test_asymmetric_grid_represents_a_shifted_range():
    w = torch.linspace(1.0, 2.0, 16).repeat(2, 1)
    q = quantize(w, bits=4, group_size=None, symmetric=False)
    assert torch.allclose(dequantize(q), w, atol=float(q.scales.max()) / 2 + 1e-6)
    assert int(q.codes.min()) > 0  # zero is kept on the grid, the range [0, 2] uses the codes


def test_per_channel_int8_is_close():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    rel = (w - dequantize(quantize(w, 8, None, True))).norm() / w.norm()
    assert float(rel) < 0.01


@pytest.mark.parametrize("kwargs,match", [({"bits": 5}, "bits=5"), ({"bits": 4, "group_size": 48}, "group_size=48")])
def test_bad_arguments_fail_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(torch.zeros(4, 128), **kwargs)
