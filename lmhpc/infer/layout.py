"""Weights laid out for decoding on CPU: contiguous (in, out) copies of the linear layers' weights.

Decoding multiplies a few rows by every weight matrix, which is bound by reading the weights. On CPU,
``x @ W_t`` with ``W_t`` a contiguous (in, out) matrix streams it markedly faster than ``F.linear(x, W)``
on the (out, in) matrix nn.Linear keeps (on SmolLM2-135M in float32, 1.25× per decoded token at batch 1;
the output layer alone 1.7×), while for many rows (a prefill) both are alike. In bfloat16 the (out, in)
kernel is the faster one, so only float32 weights are copied. The copies cost a second copy of those
weights' memory; they are kept between calls and made again when a weight changes (an optimizer step).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

DECODE_ROWS = 8  # inputs with at most this many rows take the transposed copy
WIDE = 8  # layers with this many times more outputs than inputs take (out, in) @ x.T for 2..DECODE_ROWS rows


def _linear(weight: torch.Tensor, weight_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // x.shape[-1]
    if rows == 1:
        return x @ weight_t
    if rows <= DECODE_ROWS and weight.shape[0] >= WIDE * weight.shape[1]:
        # a few rows (a verification of drafted tokens) through a wide layer (the output layer): the (out, in)
        # matrix times the rows as columns streams it once, ~2x faster than either layout's row-major product
        return (weight @ x.reshape(rows, -1).t()).t().reshape(*x.shape[:-1], weight.shape[0])
    if rows <= DECODE_ROWS:
        return x @ weight_t
    return F.linear(x, weight)


def transposable(module: nn.Module) -> bool:
    """A plain float32 CPU linear layer without bias (not sharded: a DTensor's local copy would be stale)."""
    weight = getattr(module, "weight", None)
    return (isinstance(module, nn.Linear) and module.bias is None and type(weight) is nn.Parameter
            and weight.device.type == "cpu" and weight.dtype == torch.float32)


class TransposedWeights:
    """Keeps the transposed copies of a model's linear weights and routes small inputs through them."""

    def __init__(self) -> None:
        self._copies: dict[int, tuple[int, int, torch.Tensor]] = {}  # id(weight) → (version, data_ptr, copy)

    def copy_of(self, weight: torch.Tensor) -> torch.Tensor:
        """The (in, out) copy of ``weight``, made again when the weight was changed or replaced."""
        key = (weight._version, weight.data_ptr())
        held = self._copies.get(id(weight))
        if held is None or held[:2] != key:
            with torch.no_grad():
                held = (*key, weight.detach().t().contiguous())
            self._copies[id(weight)] = held
        return held[2]

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Inside the block, the model's transposable linear layers use the copies for small inputs."""
        patched = [m for m in model.modules() if transposable(m)]
        try:
            for m in patched:
                m.forward = partial(_linear, m.weight, self.copy_of(m.weight))
            yield
        finally:
            for m in patched:
                m.__dict__.pop("forward", None)
