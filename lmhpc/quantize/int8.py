"""int8 through torchao: weight-only (``Int8WeightOnlyConfig``) and dynamic activations with int8 weights
(``Int8DynamicActivationInt8WeightConfig``), both on CPU, on a Transformer's block linears.

torchao keeps each weight as an ``Int8Tensor``: int8 codes and one float scale per output channel
(symmetric, ``W = scale * q``). :func:`torchao_int8` returns them as
:class:`~lmhpc.quantize.rtn.QuantizedTensor` (codes shifted to ``q + 128``, zero point 128) for the packed
format; :func:`apply_torchao_int8` puts stored codes and scales back into torchao's tensors at load, so the
loaded model runs torchao's int8 kernels on exactly the saved weights.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from lmhpc.quantize.rtn import QuantizedTensor

INT8_METHODS = ("int8", "int8_dynamic")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchao's import logs missing CUDA-only extensions and deprecation notes: not ours to show on CPU."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def torchao_config(method: str) -> object:
    """torchao's config object for ``int8`` (weight-only) or ``int8_dynamic``."""
    if method not in INT8_METHODS:
        raise ValueError(f"method {method!r}: torchao int8 methods are {INT8_METHODS}")
    with _quiet():
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig
    return Int8WeightOnlyConfig() if method == "int8" else Int8DynamicActivationInt8WeightConfig()


def _block_linear(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and fqn.startswith("layers.")


def _quantize(model: nn.Module, method: str) -> None:
    config = torchao_config(method)
    with _quiet():
        from torchao.quantization import quantize_

        quantize_(model, config, filter_fn=_block_linear)


def torchao_int8(model: nn.Module, method: str) -> dict[str, QuantizedTensor]:
    """Quantize the block linears of ``model`` in place with torchao; their codes and scales by parameter name."""
    names = [n for n, m in model.named_modules() if _block_linear(m, n)]
    if not names:
        raise ValueError("model: no block linear layers to quantize")
    _quantize(model, method)
    result = {}
    for name in names:
        w = model.get_submodule(name).weight
        qdata, scale = w.qdata, w.scale.reshape(w.qdata.shape[0], 1)
        codes = (qdata.to(torch.int16) + 128).to(torch.uint8)
        result[f"{name}.weight"] = QuantizedTensor(codes, scale.detach().float().clone(),
                                                   torch.full_like(scale, 128.0, dtype=torch.float32), 8,
                                                   qdata.shape[1], True)
    return result


def apply_torchao_int8(model: nn.Module, method: str, quantized: dict[str, QuantizedTensor]) -> None:
    """Make the block linears of ``model`` torchao int8 layers holding exactly the ``quantized`` codes and scales."""
    _quantize(model, method)
    for name, q in quantized.items():
        w = model.get_submodule(name.removesuffix(".weight")).weight
        if q.bits != 8 or q.scales.shape[1] != 1 or not bool((q.zeros == 128).all()):
            raise ValueError(f"{name}: int8 weights are per-channel symmetric 8-bit codes with zero point 128")
        with torch.no_grad():
            w.qdata.copy_((q.codes.to(torch.int16) - 128).to(torch.int8))
            w.scale.copy_(q.scales.reshape(w.scale.shape).to(w.scale.dtype))
