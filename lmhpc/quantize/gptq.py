"""GPTQ for one linear layer (Frantar et al., 2022): quantize columns in order, spreading each column's
rounding error over the columns not yet quantized through the inverse Hessian's Cholesky factor.

The Hessian of the layer's squared output error is H = 2 X Xᵀ over calibration inputs X (in, tokens).
Columns are processed in lazy blocks of ``block_size``; ``act_order`` takes columns by decreasing
diag(H); ``static_groups`` fixes every group's grid from the original weights before any update, so
act-order keeps groups of consecutive columns (act-order with groups therefore needs static groups).
Before a group's first column is quantized its grid is fitted to the group's columns as updated so far
so far.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from lmhpc.quantize.rtn import QuantizedTensor, check_quant_args, grid_params, quantize_codes


class HessianAccumulator:
    """Running H = 2/N Σ x xᵀ over the rows x of the inputs a linear layer sees."""

    def __init__(self, width: int) -> None:
        self.hessian = torch.zeros(width, width, dtype=torch.float64)
        self.count = 0

    def add(self, inputs: torch.Tensor) -> None:
        """Add a batch of inputs (..., width)."""
        x = inputs.detach().reshape(-1, inputs.shape[-1]).double()
        n = x.shape[0]
        self.hessian *= self.count / (self.count + n)
        self.count += n
        self.hessian += (2.0 / self.count) * x.T @ x


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread inside the block: the column loop is thousands of small ops, which a
    second thread only slows down (by 10-70x on a busy machine, where the threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int = 4, group_size: int | None = 128,
                  symmetric: bool = False, damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                  static_groups: bool = False) -> QuantizedTensor:
    """GPTQ-quantize a (out, in) weight given its input Hessian (in, in); codes are in the original column order."""
    group = check_quant_args(tuple(weight.shape), bits, group_size)
    if not 0 <= damp < 1:
        raise ValueError(f"damp={damp} must be in [0, 1)")
    out, width = weight.shape
    if act_order and group < width and not static_groups:
        raise ValueError("act_order with group_size needs static_groups=True (groups stay consecutive columns)")
    if hessian.shape != (width, width):
        raise ValueError(f"hessian shape {tuple(hessian.shape)} does not match the weight width {width}")
    w = weight.detach().double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    n_groups = width // group
    scales = torch.zeros(out, n_groups, dtype=torch.float64)
    zeros = torch.zeros(out, n_groups, dtype=torch.float64)
    if static_groups:
        wg = w.reshape(out, n_groups, group)
        scales, zeros = grid_params(wg, bits, symmetric)
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(width)
    w = w[:, perm]
    h = h[perm][:, perm]
    h += damp * torch.mean(torch.diag(h)) * torch.eye(width, dtype=torch.float64)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros(out, width, dtype=torch.float64)
    with one_thread():
        _column_loop(w, hinv, codes, scales, zeros, perm, group, bits, symmetric, block_size, static_groups)
    inverse = torch.argsort(perm)
    return QuantizedTensor(codes[:, inverse].to(torch.uint8), scales.float(), zeros.float(), bits, group,
                           symmetric)


def _column_loop(w: torch.Tensor, hinv: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                 zeros: torch.Tensor, perm: torch.Tensor, group: int, bits: int, symmetric: bool, block_size: int,
                 static_groups: bool) -> None:
    """Quantize the (permuted) columns of ``w`` in lazy blocks, spreading each error over the later columns."""
    width = w.shape[1]
    for start in range(0, width, block_size):
        end = min(start + block_size, width)
        w_block = w[:, start:end].clone()
        err_block = torch.zeros_like(w_block)
        for i in range(end - start):
            col = start + i
            g = int(perm[col]) // group
            if not static_groups and col % group == 0:
                current = torch.cat([w_block[:, i:], w[:, end:]], dim=1)[:, :group]
                scales[:, g], zeros[:, g] = grid_params(current, bits, symmetric)
            x = w_block[:, i]
            q = quantize_codes(x, scales[:, g], zeros[:, g], bits)
            codes[:, col] = q
            deq = scales[:, g] * (q - zeros[:, g])
            err = (x - deq) / hinv[col, col]
            w_block[:, i:] -= err[:, None] * hinv[col, col:end][None, :]
            err_block[:, i] = err
        w[:, end:] -= err_block @ hinv[start:end, end:]
