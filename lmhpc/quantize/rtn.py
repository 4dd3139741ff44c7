"""Round-to-nearest (RTN) quantization of a weight matrix, per output channel or per group of inputs.

A weight ``w`` of shape (out, in) is cut into groups of ``group_size`` consecutive inputs per row
(``group_size=None``: one group per row, i.e. per channel). Each group gets a scale (and, when asymmetric,
an integer zero point); ``dequantize(quantize(w))`` is within half a scale of ``w`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 8)


@dataclass
class QuantizedTensor:
    """Integer codes (out, in) in ``[0, 2**bits)`` with per-group ``scales``/``zeros`` of shape (out, groups)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor
    bits: int
    group_size: int
    symmetric: bool


def check_quant_args(shape: tuple[int, ...], bits: int, group_size: int | None) -> int:
    """Validate ``bits`` and ``group_size`` against a weight's shape; returns the effective group size."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits={bits} is not one of {SUPPORTED_BITS}")
    if len(shape) != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(shape)}")
    width = shape[1]
    group = width if group_size is None or group_size <= 0 else group_size
    if width % group:
        raise ValueError(f"group_size={group} does not divide the input width {width}")
    return group


def grid_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point for each row of ``w`` (rows are groups), over codes ``[0, 2**bits)``."""
    maxq = 2 ** bits - 1
    wmin = w.amin(dim=-1).clamp(max=0)
    wmax = w.amax(dim=-1).clamp(min=0)
    if symmetric:
        amax = torch.maximum(wmin.abs(), wmax)
        scale = 2 * amax / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.full_like(scale, (maxq + 1) / 2).floor()
    else:
        scale = (wmax - wmin) / maxq
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-wmin / scale)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes of ``w`` on the grid ``scale * (q - zero)``, clamped to ``[0, 2**bits)``."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def quantize(w: torch.Tensor, bits: int = 4, group_size: int | None = 128,
             symmetric: bool = False) -> QuantizedTensor:
    """RTN-quantize a (out, in) weight per group of ``group_size`` inputs (None: per channel)."""
    group = check_quant_args(tuple(w.shape), bits, group_size)
    out, width = w.shape
    wg = w.detach().float().reshape(out, width // group, group)
    scale, zero = grid_params(wg, bits, symmetric)
    codes = quantize_codes(wg, scale[..., None], zero[..., None], bits)
    return QuantizedTensor(codes.reshape(out, width).to(torch.uint8), scale, zero, bits, group, symmetric)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight ``scale * (code - zero)`` of a quantized tensor."""
    out, width = q.codes.shape
    codes = q.codes.reshape(out, width // q.group_size, q.group_size).float()
    w = q.scales[..., None] * (codes - q.zeros[..., None])
    return w.reshape(out, width).to(dtype)
