"""A packed on-disk format for quantized models: one safetensors file.

Each quantized linear weight ``NAME`` is stored as ``NAME.codes`` (uint8; codes of 4 bits or fewer packed
two per byte along the input axis, the first in the low nibble), ``NAME.scales`` and ``NAME.zeros``
(float32, one per group); every other tensor (embeddings, norms, the output head) is stored as it is.
The header's metadata holds ``format``, ``method``, ``bits``, ``group_size`` (or ``channel``),
``symmetric``, the quantized names and the model's arguments as JSON. :func:`load_quantized` dequantizes
at load into a float :class:`Transformer`, so the generator and the evaluate stage run it unchanged (the
file is small; memory holds float weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lmhpc.exchange.weights import args_from_dict, args_to_dict
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.rtn import QuantizedTensor, dequantize

FORMAT = "lmhpc-quantized-v1"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (out, in) as uint8; two a byte (low nibble first) when ``bits`` ≤ 4 and ``in`` is even."""
    codes = codes.to(torch.uint8)
    if bits <= 4 and codes.shape[1] % 2:
        raise ValueError(f"cannot pack {bits}-bit codes of odd width {codes.shape[1]} two a byte")
    if bits > 4:
        return codes.contiguous()
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`."""
    if bits > 4:
        return packed
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def save_quantized(model: Transformer, quantized: dict[str, QuantizedTensor], path: str | Path,
                   method: str) -> Path:
    """Write ``model`` with its ``quantized`` weights (parameter name → tensor) to ``path`` atomically."""
    if not quantized:
        raise ValueError("quantized: no quantized tensors to save")
    first = next(iter(quantized.values()))
    if any((q.bits, q.symmetric) != (first.bits, first.symmetric) for q in quantized.values()):
        raise ValueError("quantized: every tensor must share bits and symmetric")
    per_channel = all(q.scales.shape[1] == 1 for q in quantized.values())
    groups = {q.group_size for q in quantized.values()}
    if not per_channel and len(groups) > 1:
        raise ValueError(f"quantized: one group_size or per-channel for all tensors, got {sorted(groups)}")
    state = model.state_dict()
    if model.args.tie_embeddings:
        state.pop("output.weight", None)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name in quantized:
            q = quantized[name]
            tensors[f"{name}.codes"] = pack_codes(q.codes, q.bits)
            tensors[f"{name}.scales"] = q.scales.float().contiguous()
            tensors[f"{name}.zeros"] = q.zeros.float().contiguous()
        else:
            tensors[name] = value.detach().contiguous()
    missing = set(quantized) - set(state)
    if missing:
        raise ValueError(f"quantized: {sorted(missing)[:4]} are not parameters of the model")
    group_size = "channel" if per_channel else str(first.group_size)
    metadata = {"format": FORMAT, "method": method, "bits": str(first.bits), "group_size": group_size,
                "symmetric": str(first.symmetric).lower(), "quantized": json.dumps(sorted(quantized)),
                "model_args": json.dumps(args_to_dict(model.args), sort_keys=True)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of a packed file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} file (format={meta.get('format')!r})")
    return meta


def load_quantized(path: str | Path) -> Transformer:
    """A float Transformer (eval mode) whose quantized linear weights are dequantized from ``path``."""
    meta = read_metadata(path)
    bits, symmetric = int(meta["bits"]), meta["symmetric"] == "true"
    tensors = load_file(str(path))
    model = Transformer(args_from_dict(json.loads(meta["model_args"]), f"{path}:model_args"))
    state = {}
    for name in json.loads(meta["quantized"]):
        codes, scales = unpack_codes(tensors.pop(f"{name}.codes"), bits), tensors.pop(f"{name}.scales")
        group = codes.shape[1] // scales.shape[1]
        q = QuantizedTensor(codes, scales, tensors.pop(f"{name}.zeros"), bits, group, symmetric)
        state[name] = dequantize(q)
    state.update(tensors)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.args.tie_embeddings and k == "output.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return model.eval()
