"""NF4 (QLoRA's 4-bit NormalFloat) with double quantization, in bitsandbytes' layout.

Weights are flattened and cut into blocks of 64; each block is scaled by its absmax and every value is
rounded to the nearest of 16 normal quantiles (ties go to the lower code). Codes are packed two per byte,
the first value in the high nibble. Double quantization stores the block absmaxes minus their mean as
8-bit codes of the signed dynamic map, in blocks of 256 with float32 absmaxes of their own.
The 4-bit codes, the offset and the second-level absmaxes equal bitsandbytes 0.50's exactly. A second-level
code is the nearest value of the map; bitsandbytes' CPU binary search picks a neighbour of it for a few
constants (near zero and near the midpoints of the map), so a block's absmax can differ from its by one
step of the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NF4_CODE = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
], dtype=torch.float32)
ZERO_CODE = 7  # NF4_CODE[7] == 0.0: the padding of an odd-sized tensor


def dynamic_map(max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    """The signed 8-bit dynamic (exponent + fraction) map, sorted, used for the second-level constants."""
    data: list[float] = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1)
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data += [0.0, 1.0]
    data += [0.0] * (2 ** total_bits - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def blockwise_codes(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-code indices (int64) of a flat tensor scaled per block by its absmax, and the absmaxes."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    full = n - n % blocksize
    body = flat[:full].reshape(-1, blocksize)
    absmax = body.abs().amax(dim=-1)
    scaled = torch.clamp(body * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if n % blocksize:
        tail_max = flat[full:].abs().max()
        absmax = torch.cat([absmax, tail_max[None]])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max.clamp(min=1e-38), -1, 1)])
    return torch.bucketize(scaled, (code[:-1] + code[1:]) / 2), absmax


@dataclass
class NF4Tensor:
    """Packed NF4 codes with double-quantized block absmaxes (bitsandbytes' QuantState fields)."""

    packed: torch.Tensor  # uint8, (ceil(n/2),): two 4-bit codes a byte, the first in the high nibble
    absmax_codes: torch.Tensor  # uint8, one per 64-block: dynamic-map code of (absmax - offset)
    absmax_scales: torch.Tensor  # float32, one per 256 absmaxes
    offset: float  # mean of the block absmaxes
    shape: tuple[int, ...]
    blocksize: int = 64
    blocksize2: int = 256


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, blocksize2: int = 256) -> NF4Tensor:
    """NF4 codes of ``w`` with double quantization of the block absmaxes."""
    if w.numel() == 0:
        raise ValueError("cannot quantize an empty tensor")
    codes, absmax = blockwise_codes(w, NF4_CODE, blocksize)
    if codes.numel() % 2:
        codes = torch.nn.functional.pad(codes, (0, 1), value=ZERO_CODE)
    q8 = codes.to(torch.uint8)
    packed = (q8[::2] << 4) | q8[1::2]
    offset = absmax.mean()
    absmax_codes, absmax_scales = blockwise_codes(absmax - offset, dynamic_map(), blocksize2)
    zero_block = (absmax_scales == 0).repeat_interleave(blocksize2)[:absmax_codes.numel()]
    absmax_codes = absmax_codes.masked_fill(zero_block, 0)  # bitsandbytes' code for a block of zeros
    return NF4Tensor(packed, absmax_codes.to(torch.uint8), absmax_scales, float(offset), tuple(w.shape),
                     blocksize, blocksize2)


def unpack_nf4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The 4-bit codes (int64) of a packed byte tensor, high nibble first."""
    pairs = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1)
    return pairs[:numel].long()


def block_absmax(q: NF4Tensor) -> torch.Tensor:
    """The float32 block absmaxes rebuilt from their 8-bit codes."""
    values = dynamic_map()[q.absmax_codes.long()]
    n = values.numel()
    scale = q.absmax_scales.repeat_interleave(q.blocksize2)[:n]
    return values * scale + q.offset


def dequantize_nf4(q: NF4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight of an NF4 tensor."""
    numel = 1
    for d in q.shape:
        numel *= d
    values = NF4_CODE[unpack_nf4(q.packed, numel)]
    absmax = block_absmax(q).repeat_interleave(q.blocksize)[:numel]
    return (values * absmax).reshape(q.shape).to(dtype)
