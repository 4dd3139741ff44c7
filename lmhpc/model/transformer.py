"""A Llama-style decoder-only transformer in plain PyTorch, readable top to bottom.

RoPE, RMSNorm, SwiGLU, grouped-query attention through ``scaled_dot_product_attention``, tied or
untied embeddings; a Mixture-of-Experts FFN (:mod:`lmhpc.model.moe`) and a Mamba mixer
(:mod:`lmhpc.model.mamba`) as options for hybrid stacks. Nothing in here knows about parallelism:
``lmhpc.train.parallel`` shards these modules from the outside. Two hooks make that possible
without touching the math: layers live in a ``ModuleDict`` keyed by their global index (a pipeline
stage deletes the layers it does not own, keeping parameter names global), and each attention
module calls ``self.attend(q, k, v, positions)``, which context parallelism replaces.

Incremental decoding passes an :class:`~lmhpc.model.cache.InferenceCache`: each call then takes the next
tokens only, reads and extends the cached keys/values (and Mamba states), and rotates each row's tokens by
that row's own positions (rows may be left-padded). Without a cache the forward is the training one.

μP (``mup_base_dim > 0``): hidden matrices are initialised with std ∝ 1/sqrt(width multiplier),
the logits are multiplied by 1/width multiplier, and ``lmhpc.train.optim`` divides the Adam
learning rate of hidden matrices by the width multiplier. Width is meant to grow through the
number of heads at a fixed head dimension, so the attention scale stays 1/sqrt(head_dim).
"""

from __future__ import annotations

import contextlib
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.model.args import ModelArgs
from lmhpc.model.cache import InferenceCache, mamba_cached
from lmhpc.model.mamba import MambaMixer
from lmhpc.model.moe import MoE


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, each (max_seq_len, head_dim // 2)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of ``x`` (B, T, H, D) by the angles of its positions: (T, D/2), or (B, T, D/2)
    when each row has positions of its own."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return rotated.type_as(x)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    """Causal grouped-query attention of (B, H, T, D) tensors; ``positions`` unused (tokens in order)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Grouped-query self-attention with rotary position embeddings."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.attend = causal_attention  # replaced by context parallelism

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None,
                cache: InferenceCache | None = None, layer_id: int = 0) -> torch.Tensor:
        """``cos``/``sin``: the whole rotary tables; ``positions``: global positions of the local tokens (T,),
        or of each row's tokens (B, T) with a ``cache`` (which holds layer ``layer_id``'s keys and values)."""
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        bsz, seqlen = q.shape[:2]  # after the projection: under sequence parallel x is sharded
        cos, sin = (cos[:seqlen], sin[:seqlen]) if positions is None else (cos[positions], sin[positions])
        q = apply_rope(q.view(bsz, seqlen, -1, self.head_dim), cos, sin)
        k = apply_rope(k.view(bsz, seqlen, -1, self.head_dim), cos, sin)
        v = v.view(bsz, seqlen, -1, self.head_dim)
        if cache is not None:
            out = cache.attend(layer_id, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        else:
            out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), positions)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: a token mixer (attention or Mamba), then an FFN (dense or MoE)."""

    def __init__(self, layer_id: int, args: ModelArgs) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.kind = args.layer_kind(layer_id)
        self.mixer_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        if self.kind == "attention":
            self.attention: nn.Module = Attention(args)
        else:
            self.mamba: nn.Module = MambaMixer(args.dim, args.mamba)
        if args.layer_has_moe(layer_id):
            self.moe: nn.Module = MoE(args.dim, args.moe.expert_hidden or args.hidden_dim, args.moe, args.vocab_size)
        else:
            self.feed_forward: nn.Module = FeedForward(args.dim, args.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor | None,
                token_ids: torch.Tensor | None, cache: InferenceCache | None = None) -> torch.Tensor:
        if self.kind == "attention":
            # the cache goes by keyword: tensor parallelism's input hooks know the four positional inputs only
            extra = {} if cache is None else {"cache": cache, "layer_id": self.layer_id}
            h = x + self.attention(self.mixer_norm(x), cos, sin, positions, **extra)
        elif cache is not None:
            h = x + mamba_cached(self.mamba, self.mixer_norm(x), cache.mamba_state(self.layer_id), cache.token_mask)
        else:
            h = x + self.mamba(self.mixer_norm(x))
        if hasattr(self, "moe"):
            return h + self.moe(self.ffn_norm(h), token_ids)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """Token ids (B, T) → logits (B, T, vocab). Any of embedding, layers, norm, output may be absent
    (a pipeline stage holds a slice): then the input is a hidden state and so is the output."""

    def __init__(self, args: ModelArgs, init_seed: int | None = None) -> None:
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError("ModelArgs.vocab_size must be set (> 0) before building the model")
        self.args = args
        self.tok_embeddings: nn.Module | None = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm: nn.Module | None = RMSNorm(args.dim, args.norm_eps)
        self.output: nn.Module | None = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if not self.layers["0"].ffn_norm.weight.is_meta:  # meta: lmhpc.train.materialize initialises the shards
            self.init_weights(init_seed)

    def init_weights(self, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        """Normal init; depth-scaled residual outputs; μP-scaled hidden matrices; unit norm gains.

        With a ``seed`` (training runs), each parameter's values come from a generator seeded by ``seed`` and
        the parameter's global name (:func:`init_transformer`), so they do not depend on where the parameter
        lives: a pipeline stage, a tensor- or FSDP-sharded DTensor, or a model materialised from the ``meta``
        device all get the same values as the whole model built in one process. Without one, the parameters
        are drawn one after the other from ``generator`` (default: torch's global generator), whole tensors
        only."""
        if seed is not None:
            init_transformer(self, seed)
            return
        a = self.args
        hidden_std = a.init_std / math.sqrt(a.width_mult)
        out_std = hidden_std / math.sqrt(2 * a.n_layers) if a.depth_scaled_init else hidden_std
        if self.tok_embeddings is not None:
            nn.init.normal_(self.tok_embeddings.weight, std=a.embedding_init_std, generator=generator)
        if self.output is not None and not a.tie_embeddings:
            nn.init.normal_(self.output.weight, std=a.init_std, generator=generator)
        for layer in self.layers.values():
            for name, module in layer.named_modules():
                if isinstance(module, RMSNorm):
                    module.reset_parameters()
                elif isinstance(module, nn.Linear):
                    std = out_std if name.endswith(("wo", "w2", "out_proj")) else hidden_std
                    nn.init.normal_(module.weight, std=std, generator=generator)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            for module in layer.modules():  # MoE experts, Mamba's SSM parameters: after the generic pass
                if hasattr(module, "init_parameters"):
                    module.init_parameters(hidden_std, out_std, generator)
        if self.norm is not None:
            self.norm.reset_parameters()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None,
                token_ids: torch.Tensor | None = None, cache: InferenceCache | None = None,
                token_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """``tokens``: ids (B, T), or hidden states (B, T, dim) in a later pipeline stage.
        ``positions``: global position of each local token (T,), when the sequence is split.
        With a ``cache``: ``tokens`` continue the sequences it holds; ``token_mask`` (B, T) marks real tokens
        (false: padding, which no real token attends to); positions come from the cache.
        ``last_only``: logits of the last position only (B, 1, vocab)."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        if token_ids is None and self.tok_embeddings is not None:
            token_ids = tokens
        if cache is not None:
            if positions is not None:
                raise ValueError("positions come from the cache when one is given")
            positions = cache.begin(h.shape[1], token_mask)
        elif token_mask is not None:
            raise ValueError("token_mask needs a cache")
        extra = {} if cache is None else {"cache": cache}
        for layer in self.layers.values():
            h = layer(h, self.rope_cos, self.rope_sin, positions, token_ids, **extra)
        if cache is not None:
            cache.end(h.shape[1])
        if last_only:
            h = h[:, -1:]
        if self.norm is not None:
            h = self.norm(h)
        if self.output is not None:
            h = self.output(h)
            if self.args.mup_base_dim:
                h = h / self.args.width_mult
        return h


def count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward, no recompute), PaLM / torchtitan convention:
    6 × (matmul parameters a token touches) + 12 × layers × heads × head_dim × seq_len for attention.
    MoE counts the ``top_k`` experts a token uses; Mamba's scan (O(d_inner·d_state)) is left out."""
    d, hd = args.dim, args.head_dim
    dense_ffn = 3 * d * args.hidden_dim
    matmul = 0.0
    attention_layers = 0
    for i in range(args.n_layers):
        if args.layer_kind(i) == "attention":
            attention_layers += 1
            matmul += d * args.n_heads * hd * 2 + d * args.kv_heads * hd * 2
        else:
            m = args.mamba
            inner = m.expand * d
            matmul += d * 2 * inner + inner * (m.resolved_dt_rank(d) + 2 * m.d_state) + m.resolved_dt_rank(d) * inner
            matmul += inner * d
        if args.layer_has_moe(i):
            k = 1 if args.moe.router == "hash" else args.moe.top_k
            matmul += k * 3 * d * (args.moe.expert_hidden or args.hidden_dim) + d * args.moe.num_experts
        else:
            matmul += dense_ffn
    matmul += d * args.vocab_size  # output projection (the embedding lookup is free)
    return 6.0 * matmul + 12.0 * attention_layers * args.n_heads * hd * seq_len


# ---------------------------------------------------------------------------------------------
# initialisation, independent of the parallel layout

# wrappers that parallelism puts around a block (activation checkpointing, torch.compile): not part of
# the global parameter names the initialisation is keyed by
_WRAPPER_NAMES = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def canonical_name(name: str) -> str:
    """``name`` without the wrapper components parallelism inserts."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_NAMES)


def init_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator for the tensor called ``name``: seeded by the run's seed and that name only."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def write_full(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy ``full`` (the whole tensor, on the CPU) into ``param``: all of it, or this rank's part of a
    DTensor (whatever its placements: tensor parallel, FSDP2, both, expert parallel)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        local = distribute_tensor(full.to(param.device_mesh.device_type), param.device_mesh, param.placements,
                                  src_data_rank=None).to_local()
        param.to_local().copy_(local)
    else:
        param.copy_(full)


@contextlib.contextmanager
def full_parameters(module: nn.Module):
    """Within the block, ``module``'s parameters (recursively) are whole fp32 CPU tensors; on exit each
    parameter receives its part of them (:func:`write_full`). Memory: one module's whole parameters."""
    slots = []
    for owner in module.modules():
        for name, param in list(owner._parameters.items()):
            if param is None:
                continue
            full = nn.Parameter(torch.empty(param.shape, dtype=param.dtype, device="cpu"), requires_grad=False)
            slots.append((owner, name, param, full))
            owner._parameters[name] = full
    try:
        yield
    finally:
        for owner, name, param, _ in slots:
            owner._parameters[name] = param
    for _, _, param, full in slots:
        write_full(param, full)


def _init_unit(module: nn.Module, prefix: str, seed: int, hidden_std: float, out_std: float) -> None:
    """Initialise a block's submodule ``module`` (global name ``prefix``), whose parameters are whole tensors."""
    for name, sub in module.named_modules():
        full_name = canonical_name(f"{prefix}.{name}" if name else prefix)
        if isinstance(sub, RMSNorm):
            sub.reset_parameters()
        elif isinstance(sub, nn.Linear):
            std = out_std if full_name.endswith(("wo", "w2", "out_proj")) else hidden_std
            nn.init.normal_(sub.weight, std=std, generator=init_generator(seed, full_name + ".weight"))
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
    for name, sub in module.named_modules():  # MoE experts, Mamba's SSM parameters: after the generic pass
        if hasattr(sub, "init_parameters"):
            full_name = canonical_name(f"{prefix}.{name}" if name else prefix)
            sub.init_parameters(hidden_std, out_std, init_generator(seed, full_name))


def init_transformer(model: Transformer, seed: int) -> None:
    """The initialisation of :meth:`Transformer.init_weights`, one unit (a norm, a linear layer, an MoE or
    Mamba mixer) at a time: its whole tensors are drawn on the CPU from generators keyed by ``seed`` and
    the global parameter names, and each parameter keeps its own part."""
    a = model.args
    hidden_std = a.init_std / math.sqrt(a.width_mult)
    out_std = hidden_std / math.sqrt(2 * a.n_layers) if a.depth_scaled_init else hidden_std
    with torch.no_grad():
        if model.tok_embeddings is not None:
            with full_parameters(model.tok_embeddings):
                nn.init.normal_(model.tok_embeddings.weight, std=a.embedding_init_std,
                                generator=init_generator(seed, "tok_embeddings.weight"))
        if model.output is not None and not a.tie_embeddings:
            with full_parameters(model.output):
                nn.init.normal_(model.output.weight, std=a.init_std, generator=init_generator(seed, "output.weight"))
        for key, layer in model.layers.items():
            block = layer
            while not isinstance(block, TransformerBlock):  # under activation checkpointing / compile wrappers
                block = getattr(block, "_checkpoint_wrapped_module", None) or block._orig_mod
            for name, child in block.named_children():
                with full_parameters(child):
                    _init_unit(child, f"layers.{key}.{name}", seed, hidden_std, out_std)
        if model.norm is not None:
            with full_parameters(model.norm):
                model.norm.reset_parameters()
