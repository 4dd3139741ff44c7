"""Quantize a Transformer's linear layers block by block: RTN, or GPTQ on calibration token sequences.

GPTQ runs one block at a time so memory stays one block's worth: the block's inputs (the previous block's
outputs on the calibration sequences, computed with the previous blocks already quantized) give each
linear layer's Hessian; the block's linears are quantized and the block is run again for the next one.
With ``true_sequential`` the linears of a block are quantized in the order they run (q/k/v, then the
attention output, then gate/up, then down), each group's inputs coming from the block with the earlier
groups already quantized. Embeddings, norms and the output head stay in float.
"""

from __future__ import annotations

import torch
from torch import nn

from lmhpc.model.transformer import Transformer
from lmhpc.quantize.gptq import HessianAccumulator, gptq_quantize
from lmhpc.quantize.nf4 import NF4Tensor, dequantize_nf4, quantize_nf4
from lmhpc.quantize.rtn import QuantizedTensor, check_quant_args, dequantize, quantize


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The quantized linear layers of a block, by their name inside it."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def check_model(model: Transformer, bits: int, group_size: int | None) -> None:
    """Fail before any work on a model we cannot quantize or a grid that does not fit its layers."""
    if not isinstance(model, Transformer) or model.tok_embeddings is None:
        raise ValueError(f"model: a whole lmhpc Transformer is needed, got {type(model).__name__}")
    for key, block in model.layers.items():
        if block.kind != "attention" or hasattr(block, "moe"):
            raise ValueError(f"model.layers.{key}: only dense attention blocks are quantized "
                             f"(layer_pattern 'A', moe.num_experts 0)")
        for name, linear in block_linears(block).items():
            try:
                check_quant_args(tuple(linear.weight.shape), bits, group_size)
            except ValueError as err:
                raise ValueError(f"layers.{key}.{name}: {err}") from None


def set_weight(linear: nn.Linear, q: QuantizedTensor) -> None:
    """Replace a linear layer's weight by its dequantized value."""
    with torch.no_grad():
        linear.weight.copy_(dequantize(q, linear.weight.dtype))


def rtn_model(model: Transformer, bits: int = 4, group_size: int | None = 128,
              symmetric: bool = False) -> dict[str, QuantizedTensor]:
    """RTN-quantize every block's linear layers in place; returns the quantized tensors by parameter name."""
    check_model(model, bits, group_size)
    result = {}
    for key, block in model.layers.items():
        for name, linear in block_linears(block).items():
            q = quantize(linear.weight, bits, group_size, symmetric)
            set_weight(linear, q)
            result[f"layers.{key}.{name}.weight"] = q
    return result


def nf4_model(model: Transformer) -> dict[str, NF4Tensor]:
    """NF4-quantize (double quantization) every block's linear layers in place; the NF4 tensors by name."""
    check_model(model, 4, None)
    result = {}
    for key, block in model.layers.items():
        for name, linear in block_linears(block).items():
            q = quantize_nf4(linear.weight.detach().float())
            with torch.no_grad():
                linear.weight.copy_(dequantize_nf4(q, linear.weight.dtype))
            result[f"layers.{key}.{name}.weight"] = q
    return result


SEQUENTIAL_GROUPS = (("attention.wq", "attention.wk", "attention.wv"), ("attention.wo",),
                     ("feed_forward.w1", "feed_forward.w3"), ("feed_forward.w2",))


def _sequential_groups(linears: dict[str, nn.Linear], true_sequential: bool) -> list[list[str]]:
    if not true_sequential:
        return [list(linears)]
    groups = [[n for n in group if n in linears] for group in SEQUENTIAL_GROUPS]
    rest = [n for n in linears if not any(n in g for g in groups)]
    return [g for g in groups if g] + ([rest] if rest else [])


@torch.no_grad()
def gptq_model(model: Transformer, calibration: torch.Tensor, bits: int = 4, group_size: int | None = 128,
               symmetric: bool = False, damp: float = 0.01, act_order: bool = False,
               static_groups: bool = False, batch_size: int = 8, true_sequential: bool = False,
               block_size: int = 128) -> dict[str, QuantizedTensor]:
    """GPTQ-quantize every block's linear layers in place from calibration sequences (N, T) of token ids."""
    check_model(model, bits, group_size)
    if act_order and group_size and not static_groups:
        raise ValueError("act_order with group_size needs static_groups=True")
    if calibration.dim() != 2 or calibration.numel() == 0 or calibration.dtype != torch.long:
        raise ValueError("calibration: a non-empty LongTensor of token sequences (N, T) is needed")
    if int(calibration.max()) >= model.args.vocab_size or int(calibration.min()) < 0:
        raise ValueError(f"calibration: token ids must lie in [0, {model.args.vocab_size})")
    if calibration.shape[1] > model.args.max_seq_len:
        raise ValueError(f"calibration: sequences of {calibration.shape[1]} tokens exceed max_seq_len")
    batches = list(calibration.split(batch_size))
    hidden = [model.tok_embeddings(b) for b in batches]
    cos, sin = model.rope_cos, model.rope_sin
    result = {}
    for key, block in model.layers.items():
        linears = block_linears(block)
        for group in _sequential_groups(linears, true_sequential):
            accs = {name: HessianAccumulator(linears[name].in_features) for name in group}
            hooks = [linears[name].register_forward_hook(lambda _m, inp, _out, acc=accs[name]: acc.add(inp[0]))
                     for name in group]
            try:
                for h, tokens in zip(hidden, batches):
                    block(h, cos, sin, None, tokens)
            finally:
                for hook in hooks:
                    hook.remove()
            for name in group:
                linear = linears[name]
                q = gptq_quantize(linear.weight, accs[name].hessian, bits, group_size, symmetric, damp,
                                  block_size=block_size, act_order=act_order, static_groups=static_groups)
                set_weight(linear, q)
                result[f"layers.{key}.{name}.weight"] = q
        hidden = [block(h, cos, sin, None, tokens) for h, tokens in zip(hidden, batches)]
    return result
