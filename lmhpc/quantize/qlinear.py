"""Linear layers that keep quantized weights in memory and dequantize them on the fly in ``forward``.

:class:`QuantLinear` holds the packed integer codes (two 4-bit-or-fewer codes a byte) and the per-group
scales and zero points of a :class:`~lmhpc.quantize.rtn.QuantizedTensor`; :class:`NF4Linear` holds an
:class:`~lmhpc.quantize.nf4.NF4Tensor` (4-bit NF4 codes, double-quantized block absmaxes). Neither keeps a
float weight between calls: each forward rebuilds the weight for the matrix product and lets it go, so a
quantized model is smaller in memory, not only on disk. Both are frozen (buffers, no parameters).

QLoRA: :func:`nf4_base` swaps a Transformer's block linears for :class:`NF4Linear`. A LoRA adapter wraps such
a layer like a float one: it calls ``base(x)`` and adds ``scale * B(A(x))`` with ``A`` of shape
(rank, ``base.in_features``) and ``B`` of shape (``base.out_features``, rank); only ``A`` and ``B`` train
(the base has no parameters to freeze), and gradients flow through the dequantized weight to ``x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.quantize.nf4 import NF4_CODE, NF4Tensor, dynamic_map, quantize_nf4, unpack_nf4
from lmhpc.quantize.rtn import QuantizedTensor


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (out, in) as uint8; two a byte (low nibble first) when ``bits`` ≤ 4 (``in`` must be even)."""
    codes = codes.to(torch.uint8)
    if bits > 4:
        return codes.contiguous()
    if codes.shape[1] % 2:
        raise ValueError(f"cannot pack {bits}-bit codes of odd width {codes.shape[1]} two a byte")
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`."""
    if bits > 4:
        return packed
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


class QuantLinear(nn.Module):
    """``y = x Wᵀ`` with ``W = scale * (code - zero)`` per group of ``group_size`` inputs, rebuilt each call."""

    def __init__(self, q: QuantizedTensor) -> None:
        super().__init__()
        self.out_features, self.in_features = q.codes.shape
        self.bits, self.group_size, self.symmetric = q.bits, q.group_size, q.symmetric
        self.register_buffer("codes", pack_codes(q.codes, q.bits))
        self.register_buffer("scales", q.scales.float().contiguous())
        self.register_buffer("zeros", q.zeros.float().contiguous())

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in); equal to :func:`lmhpc.quantize.rtn.dequantize` of the same tensor."""
        out, groups = self.scales.shape
        codes = unpack_codes(self.codes, self.bits).reshape(out, groups, self.group_size).float()
        w = self.scales[..., None] * (codes - self.zeros[..., None])
        return w.reshape(out, self.in_features).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """A float copy of the weight, for code that reads ``.weight`` (not kept)."""
        return self.dequantized()

    def quantized(self) -> QuantizedTensor:
        """The codes, scales and zero points as a :class:`QuantizedTensor`."""
        return QuantizedTensor(unpack_codes(self.codes, self.bits), self.scales, self.zeros, self.bits,
                               self.group_size, self.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, symmetric={self.symmetric}")


class NF4Linear(nn.Module):
    """``y = x Wᵀ`` with ``W`` rebuilt each call from NF4 codes and double-quantized block absmaxes."""

    def __init__(self, q: NF4Tensor) -> None:
        super().__init__()
        if len(q.shape) != 2:
            raise ValueError(f"NF4Linear needs a 2-D weight, got shape {q.shape}")
        self.out_features, self.in_features = q.shape
        self.blocksize, self.blocksize2 = q.blocksize, q.blocksize2
        self.register_buffer("packed", q.packed.contiguous())
        self.register_buffer("absmax_codes", q.absmax_codes.contiguous())
        self.register_buffer("absmax_scales", q.absmax_scales.float().contiguous())
        self.register_buffer("offset", torch.tensor(q.offset, dtype=torch.float32))
        self.register_buffer("code", NF4_CODE.clone(), persistent=False)
        self.register_buffer("dmap", dynamic_map(), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> NF4Linear:
        if linear.bias is not None:
            raise ValueError("NF4Linear: linear layers with a bias are not supported")
        return cls(quantize_nf4(linear.weight.detach().float()))

    def nf4(self) -> NF4Tensor:
        return NF4Tensor(self.packed, self.absmax_codes, self.absmax_scales, float(self.offset),
                         (self.out_features, self.in_features), self.blocksize, self.blocksize2)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight (out, in); equal to :func:`lmhpc.quantize.nf4.dequantize_nf4`."""
        numel = self.out_features * self.in_features
        values = self.code[unpack_nf4(self.packed, numel)]
        n = self.absmax_codes.numel()
        absmax = self.dmap[self.absmax_codes.long()] * self.absmax_scales.repeat_interleave(self.blocksize2)[:n]
        absmax = (absmax + self.offset).repeat_interleave(self.blocksize)[:numel]
        return (values * absmax).reshape(self.out_features, self.in_features).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """A float copy of the weight, for code that reads ``.weight`` (not kept)."""
        return self.dequantized()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nf4 block {self.blocksize}"


def block_linear_names(model: nn.Module) -> list[str]:
    """Dotted names of the linear layers inside the Transformer's blocks (not the output head)."""
    return [name for name, m in model.named_modules()
            if name.startswith("layers.") and isinstance(m, (nn.Linear, QuantLinear, NF4Linear))]


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def nf4_base(model: nn.Module) -> nn.Module:
    """Swap every block linear of a Transformer for a frozen :class:`NF4Linear` (a QLoRA base), in place.

    The other parameters (embeddings, norms, output head) stay as they are; freeze them for QLoRA. Returns
    ``model``."""
    names = [n for n in block_linear_names(model) if isinstance(model.get_submodule(n), nn.Linear)]
    if not names:
        raise ValueError("nf4_base: the model has no block linear layers to quantize")
    for name in names:
        replace_module(model, name, NF4Linear.from_linear(model.get_submodule(name)))
    return model


def module_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and persistent buffers (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for t in list(module.parameters()) + [b for _, b in module.named_buffers() if b is not None]:
        seen[id(t)] = t.numel() * t.element_size()
    non_persistent = {id(b) for m in module.modules() for name, b in m._buffers.items()
                      if b is not None and name in m._non_persistent_buffers_set}
    return sum(size for key, size in seen.items() if key not in non_persistent)
