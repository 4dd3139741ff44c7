"""Compiled decoding: one decoding step (one new token per row) through ``torch.compile`` over a static KV cache.

The step reads and writes the preallocated buffers of an :class:`~lmhpc.model.cache.InferenceCache` (B,
kv_heads, max_len, head_dim) in place: the new keys and values go to the slot given as a tensor, and the
queries attend to every slot of the buffer with the cache's ``valid`` mask (slots not yet filled are
masked), so every step has the same shapes and the same graph: it compiles once per batch size and cache
length. The prompt's prefill stays eager (its length varies). The math is :class:`Transformer`'s (RMSNorm,
RoPE at each row's own position, grouped-query attention as :func:`~lmhpc.model.cache.decode_attention`,
SwiGLU), for dense attention-only models (no Mixture-of-Experts or Mamba layers). On CPU, inductor generates
C++ kernels (first call: tens of seconds); on GPU the same step also runs under CUDA graphs
(``mode="reduce-overhead"``), see ``tools/gpu_decode_check.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmhpc.model.cache import AttentionCache, InferenceCache, decode_attention
from lmhpc.model.transformer import Transformer, apply_rope


def check_compilable(model: Transformer) -> None:
    """Raise ValueError unless ``model`` is a whole dense attention-only model."""
    args = model.args
    if any(args.layer_kind(i) != "attention" or args.layer_has_moe(i) for i in range(args.n_layers)):
        raise ValueError("compiled decoding takes dense attention-only models (no Mamba or MoE layers)")
    if model.tok_embeddings is None or model.norm is None or model.output is None:
        raise ValueError("compiled decoding needs a whole model (embeddings, final norm, output layer)")


def _rms(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + norm.eps)
    return normed.type_as(x) * norm.weight


class CompiledDecodeStep:
    """``step(tokens (B, 1), cache) → logits (B, vocab)``: the next token of every row (all real tokens),
    compiled with ``torch.compile(mode=mode)``; the cache's bookkeeping (length, positions) as its own
    forward would do it. ``compile=False`` runs the same static-shape step eagerly (for comparisons)."""

    def __init__(self, model: Transformer, mode: str | None = None, compile: bool = True) -> None:
        check_compilable(model)
        self.model = model
        self.ids = sorted(int(i) for i in model.layers)
        self.fn = torch.compile(self._step, mode=mode, fullgraph=True, dynamic=False) if compile else self._step

    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, valid: torch.Tensor,
              ks: list[torch.Tensor], vs: list[torch.Tensor]) -> torch.Tensor:
        m = self.model
        h = m.tok_embeddings(tokens)
        bsz = tokens.shape[0]
        cos, sin = m.rope_cos[positions], m.rope_sin[positions]  # (B, 1, D/2)
        mask = valid[:, None, None, :]
        for n, layer_id in enumerate(self.ids):
            layer = m.layers[str(layer_id)]
            att = layer.attention
            x = _rms(layer.mixer_norm, h)
            q = apply_rope(att.wq(x).view(bsz, 1, -1, att.head_dim), cos, sin).transpose(1, 2)
            k = apply_rope(att.wk(x).view(bsz, 1, -1, att.head_dim), cos, sin).transpose(1, 2)
            v = att.wv(x).view(bsz, 1, -1, att.head_dim).transpose(1, 2)
            ks[n].index_copy_(2, slot, k)
            vs[n].index_copy_(2, slot, v)
            out = decode_attention(q, ks[n], vs[n], mask)
            h = h + att.wo(out.transpose(1, 2).reshape(bsz, 1, -1))
            x = _rms(layer.ffn_norm, h)
            ffn = layer.feed_forward
            h = h + ffn.w2(F.silu(ffn.w1(x)) * ffn.w3(x))
        logits = m.output(_rms(m.norm, h))[:, -1]
        return logits / m.args.width_mult if m.args.mup_base_dim else logits

    def __call__(self, tokens: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        start = cache.length
        if start >= cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} slots; {start + 1} needed")
        positions = cache.next_position[:, None].clone()
        if int(positions.max()) >= cache.max_positions:
            raise ValueError(f"a row reaches position {int(positions.max())}; the model's rotary tables end at "
                             f"{cache.max_positions - 1} (model max_seq_len)")
        cache.valid[:, start] = True
        entries = [cache.layers[i] for i in self.ids]
        assert all(isinstance(e, AttentionCache) for e in entries)
        slot = torch.tensor([start], device=tokens.device)
        logits = self.fn(tokens, positions, slot, cache.valid, [e.k for e in entries], [e.v for e in entries])
        cache.next_position += 1
        cache.length = start + 1
        return logits
