"""A packed on-disk format for quantized models: one safetensors file, and a model folder around it.

Affine schemes (RTN, GPTQ, int8): each quantized linear weight ``NAME`` is stored as ``NAME.codes`` (uint8;
codes of 4 bits or fewer packed two per byte along the input axis, the first in the low nibble),
``NAME.scales`` and ``NAME.zeros`` (float32, one per group). NF4: ``NAME.nf4`` (two 4-bit codes a byte, the
first in the high nibble, bitsandbytes' layout), ``NAME.absmax_codes`` (uint8), ``NAME.absmax_scales`` and
``NAME.offset`` (float32): the double-quantized block absmaxes. Every other tensor (embeddings, norms, the
output head) is stored as it is. The header's metadata holds ``format``, ``scheme`` (affine or nf4),
``method``, ``bits``, ``group_size`` (or ``channel``; NF4: its block size), ``symmetric``, the quantized names
and the model's arguments as JSON.

:func:`load_quantized` gives a float :class:`Transformer` (``dequantize=True``) or one whose block linears
keep the codes and dequantize on the fly (:class:`~lmhpc.quantize.qlinear.QuantLinear`,
:class:`~lmhpc.quantize.qlinear.NF4Linear`; int8 methods: torchao's int8 layers). A model folder
(:func:`save_folder`) is ``model.safetensors`` plus the tokenizer files; :func:`load_folder` opens it for the
generator and the evaluate stage (through :func:`lmhpc.exchange.load_model`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from lmhpc.exchange.weights import args_from_dict, args_to_dict
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.int8 import INT8_METHODS, apply_torchao_int8
from lmhpc.quantize.nf4 import NF4Tensor, dequantize_nf4
from lmhpc.quantize.qlinear import NF4Linear, QuantLinear, pack_codes, replace_module, unpack_codes
from lmhpc.quantize.rtn import QuantizedTensor
from lmhpc.quantize.rtn import dequantize as dequantize_affine

if TYPE_CHECKING:
    from lmhpc.exchange.load import LoadedModel

FORMAT = "lmhpc-quantized-v1"
MODEL_FILE = "model.safetensors"

__all__ = ["FORMAT", "MODEL_FILE", "pack_codes", "unpack_codes", "save_quantized", "read_metadata",
           "load_quantized", "save_folder", "is_packed", "load_folder", "bits_per_weight"]


def _scheme(quantized: dict[str, QuantizedTensor | NF4Tensor]) -> str:
    kinds = {type(q) for q in quantized.values()}
    if len(kinds) > 1:
        raise ValueError("quantized: NF4 and affine tensors cannot share a file")
    return "nf4" if kinds == {NF4Tensor} else "affine"


def _affine_metadata(quantized: dict[str, QuantizedTensor]) -> dict[str, str]:
    first = next(iter(quantized.values()))
    if any((q.bits, q.symmetric) != (first.bits, first.symmetric) for q in quantized.values()):
        raise ValueError("quantized: every tensor must share bits and symmetric")
    per_channel = all(q.scales.shape[1] == 1 for q in quantized.values())
    groups = {q.group_size for q in quantized.values()}
    if not per_channel and len(groups) > 1:
        raise ValueError(f"quantized: one group_size or per-channel for all tensors, got {sorted(groups)}")
    return {"bits": str(first.bits), "group_size": "channel" if per_channel else str(first.group_size),
            "symmetric": str(first.symmetric).lower()}


def save_quantized(model: Transformer, quantized: dict[str, QuantizedTensor | NF4Tensor], path: str | Path,
                   method: str) -> Path:
    """Write ``model`` with its ``quantized`` weights (parameter name → tensor) to ``path`` atomically."""
    if not quantized:
        raise ValueError("quantized: no quantized tensors to save")
    scheme = _scheme(quantized)
    if scheme == "nf4":
        first = next(iter(quantized.values()))
        meta = {"bits": "4", "group_size": str(first.blocksize), "blocksize2": str(first.blocksize2),
                "symmetric": "true"}
    else:
        meta = _affine_metadata(quantized)  # type: ignore[arg-type]
    full = model.state_dict()
    state = {k: v for k, v in full.items() if k not in quantized}
    missing = [n for n in quantized if n not in full]
    if missing:
        raise ValueError(f"quantized: {sorted(missing)[:4]} are not parameters of the model")
    if model.args.tie_embeddings:
        state.pop("output.weight", None)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        tensors[name] = value.detach().contiguous()
    for name, q in quantized.items():
        if isinstance(q, NF4Tensor):
            tensors[f"{name}.nf4"] = q.packed.contiguous()
            tensors[f"{name}.absmax_codes"] = q.absmax_codes.contiguous()
            tensors[f"{name}.absmax_scales"] = q.absmax_scales.float().contiguous()
            tensors[f"{name}.offset"] = torch.tensor([q.offset], dtype=torch.float32)
        else:
            tensors[f"{name}.codes"] = pack_codes(q.codes, q.bits)
            tensors[f"{name}.scales"] = q.scales.float().contiguous()
            tensors[f"{name}.zeros"] = q.zeros.float().contiguous()
    metadata = {"format": FORMAT, "scheme": scheme, "method": method, **meta,
                "quantized": json.dumps(sorted(quantized)),
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


def read_quantized(path: str | Path) -> tuple[dict[str, str], dict[str, QuantizedTensor | NF4Tensor],
                                               dict[str, torch.Tensor]]:
    """(metadata, quantized tensors by parameter name, the other tensors) of a packed file."""
    meta = read_metadata(path)
    tensors = load_file(str(path))
    args = json.loads(meta["model_args"])
    quantized: dict[str, QuantizedTensor | NF4Tensor] = {}
    shapes = _weight_shapes(args) if meta.get("scheme", "affine") == "nf4" else {}
    for name in json.loads(meta["quantized"]):
        if meta.get("scheme", "affine") == "nf4":
            shape = shapes[name]
            quantized[name] = NF4Tensor(tensors.pop(f"{name}.nf4"), tensors.pop(f"{name}.absmax_codes"),
                                        tensors.pop(f"{name}.absmax_scales"), float(tensors.pop(f"{name}.offset")[0]),
                                        shape, int(meta["group_size"]), int(meta["blocksize2"]))
        else:
            bits = int(meta["bits"])
            codes, scales = unpack_codes(tensors.pop(f"{name}.codes"), bits), tensors.pop(f"{name}.scales")
            quantized[name] = QuantizedTensor(codes, scales, tensors.pop(f"{name}.zeros"), bits,
                                              codes.shape[1] // scales.shape[1], meta["symmetric"] == "true")
    return meta, quantized, tensors


def _weight_shapes(args: dict) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of the model, from a model built on the meta device."""
    with torch.device("meta"):
        model = Transformer(args_from_dict(args, "model_args"))
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def load_quantized(path: str | Path, dequantize: bool = True) -> Transformer:
    """The Transformer (eval mode) in the packed file ``path``.

    ``dequantize=True``: a float model whose quantized weights are dequantized. ``False``: its block linears
    keep the codes (:class:`QuantLinear`, :class:`NF4Linear`; torchao's int8 layers for the int8 methods)."""
    meta, quantized, tensors = read_quantized(path)
    model = Transformer(args_from_dict(json.loads(meta["model_args"]), f"{path}:model_args"))
    state = dict(tensors)
    torchao = meta["method"] in INT8_METHODS and not dequantize
    for name, q in quantized.items():
        if dequantize or torchao:
            state[name] = dequantize_nf4(q) if isinstance(q, NF4Tensor) else dequantize_affine(q)
        else:
            module = NF4Linear(q) if isinstance(q, NF4Tensor) else QuantLinear(q)
            replace_module(model, name.removesuffix(".weight"), module)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.args.tie_embeddings and k == "output.weight")]
    if not dequantize and not torchao:
        missing = [k for k in missing if k.rsplit(".", 1)[0] + ".weight" not in quantized
                   and k.removesuffix(".weight") + ".weight" not in quantized]
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if torchao:
        apply_torchao_int8(model, meta["method"], quantized)  # type: ignore[arg-type]
    return model.eval()


def bits_per_weight(quantized: dict[str, QuantizedTensor | NF4Tensor]) -> float:
    """Stored bits per quantized weight, scales, zero points and second-level constants included."""
    bits = numel = 0
    for q in quantized.values():
        if isinstance(q, NF4Tensor):
            n = 1
            for d in q.shape:
                n *= d
            stored = [q.packed, q.absmax_codes, q.absmax_scales]
            bits += 32  # the offset
        else:
            n = q.codes.numel()
            stored = [pack_codes(q.codes, q.bits), q.scales.float(), q.zeros.float()]
        bits += sum(8 * t.numel() * t.element_size() for t in stored)
        numel += n
    return bits / numel


def save_folder(model: Transformer, quantized: dict[str, QuantizedTensor | NF4Tensor], folder: str | Path,
                method: str, tokenizer_files: dict[str, bytes] | None = None) -> Path:
    """A model folder: ``model.safetensors`` (:func:`save_quantized`) and the tokenizer files."""
    from lmhpc.exchange.weights import write_tokenizer_files

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_files:
        write_tokenizer_files(tokenizer_files, folder)
    save_quantized(model, quantized, folder / MODEL_FILE, method)
    return folder


def _packed_file(path: Path) -> Path | None:
    candidate = path / MODEL_FILE if path.is_dir() else path
    if candidate.suffix != ".safetensors" or not candidate.is_file():
        return None
    try:
        read_metadata(candidate)
    except Exception:
        return None
    return candidate


def is_packed(path: str | Path) -> bool:
    """Whether ``path`` is a packed file or a folder holding one as ``model.safetensors``."""
    return _packed_file(Path(path)) is not None


def load_folder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                tokenizer: str | Path | None = None, dequantize: bool = False) -> LoadedModel:
    """A packed model ready to run (quantized layers unless ``dequantize``) with its folder's tokenizer
    (or ``tokenizer``)."""
    from lmhpc.exchange.load import LoadedModel
    from lmhpc.exchange.tokenizer import load_tokenizer

    path = Path(path)
    file = _packed_file(path)
    if file is None:
        raise ValueError(f"{path}: not a packed quantized model ({MODEL_FILE} with format {FORMAT})")
    model = load_quantized(file, dequantize=dequantize).to(device)
    for param in model.parameters():  # torchao's int8 weights stay as they are
        if type(param.data) is torch.Tensor:
            param.data = param.data.to(dtype)
    text_tokenizer = load_tokenizer(tokenizer if tokenizer is not None else file.parent)
    return LoadedModel(model.eval(), model.args, text_tokenizer, path)
