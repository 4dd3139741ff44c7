"""NF4 with double quantization against bitsandbytes 0.50 on CPU (a test-only golden)."""

from __future__ import annotations

import pytest
import torch

from lmhpc.quantize.nf4 import NF4_CODE, block_absmax, dequantize_nf4, dynamic_map, quantize_nf4, unpack_nf4
from tests.helpers import import_peer


@pytest.mark.parametrize("shape", [(96, 128), (300, 70), (33,)])
def test_nf4_codes_equal_bitsandbytes(shape):
    functional = import_peer("bitsandbytes.functional")
    torch.manual_seed(0)
    w = torch.randn(*shape) * 0.05
    packed, state = functional.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    q = quantize_nf4(w)
    assert torch.equal(q.packed, packed.reshape(-1))  # 4-bit codes and their packing, bit for bit
    assert q.offset == float(state.offset)
    assert torch.equal(q.absmax_scales, state.state2.absmax)
    # second-level codes: ours is the nearest map value, bitsandbytes' CPU search a neighbour at worst
    ours, theirs = q.absmax_codes.long(), state.absmax.reshape(-1).long()
    assert int((ours - theirs).abs().max()) <= 1
    theirs_w = functional.dequantize_4bit(packed, state)
    step = float(q.absmax_scales.max()) * float(dynamic_map().diff().max())
    assert float((dequantize_nf4(q) - theirs_w).abs().max()) <= step + 1e-7


def test_nf4_dequantize_is_within_half_a_code_gap():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    q = quantize_nf4(w)
    absmax = block_absmax(q).repeat_interleave(64)
    codes = unpack_nf4(q.packed, w.numel())
    gaps = NF4_CODE.diff()
    half_gap = torch.maximum(gaps[(codes - 1).clamp(0, 14)], gaps[codes.clamp(max=14)]) / 2
    true_absmax = w.reshape(-1, 64).abs().amax(-1).repeat_interleave(64)
    scaled = w.reshape(-1) / true_absmax
    assert bool(((scaled - NF4_CODE[codes]).abs() <= half_gap + 1e-6).all())
    rel = (dequantize_nf4(q) - w).norm() / w.norm()
    assert 0.05 < float(rel) < 0.15  # 4-bit normal quantiles: about 10% relative error on gaussian weights
    assert float((absmax - true_absmax).abs().max() / true_absmax.max()) < 0.01  # 8-bit constants
