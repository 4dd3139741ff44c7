"""The model's shape and options as plain dataclasses (no torch), so configs load without torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class MambaArgs:
    """Mamba mixer options (used by layers marked ``M`` in ``model.layer_pattern``)."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0: ceil(dim / 16)
    dt_min: float = 0.001
    dt_max: float = 0.1

    def resolved_dt_rank(self, dim: int) -> int:
        return self.dt_rank or math.ceil(dim / 16)


@dataclass
class MoEArgs:
    """Mixture-of-Experts options. ``num_experts: 0`` means dense FFNs."""

    num_experts: int = 0
    top_k: int = 2
    every: int = 1  # every k-th layer's FFN is an MoE (1: all)
    expert_hidden: int = 0  # 0: the dense FFN's hidden size
    router: Literal["topk", "hash"] = "topk"
    capacity_factor: float = 1.25  # <= 0: no capacity limit (no dropped tokens)
    load_balance_coef: float = 0.01
    z_loss_coef: float = 0.001
    hash_seed: int = 0


LAYER_KINDS = {"A": "attention", "M": "mamba"}


@dataclass
class ModelArgs:
    """Shape and parametrisation of the model. ``vocab_size: 0`` means "from the tokenizer"."""

    vocab_size: int = 0
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 0  # 0: same as n_heads (no grouping)
    ffn_hidden: int = 0  # 0: 8/3 * dim rounded up to ffn_multiple_of (SwiGLU convention)
    ffn_multiple_of: int = 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    layer_pattern: str = "A"  # repeated over layers: A = attention, M = mamba ("MMA" = 2 mamba, 1 attention, ...)
    init_std: float = 0.02
    embedding_init_std: float = 0.02  # small-init embeddings: e.g. 1e-4
    depth_scaled_init: bool = True  # output projections of each residual branch: std / sqrt(2 * n_layers)
    mup_base_dim: int = 0  # > 0: μP with this as the base width
    moe: MoEArgs = field(default_factory=MoEArgs)
    mamba: MambaArgs = field(default_factory=MambaArgs)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        hidden = int(8 * self.dim / 3)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    @property
    def width_mult(self) -> float:
        """μP width multiplier (1 under the standard parametrisation)."""
        return self.dim / self.mup_base_dim if self.mup_base_dim else 1.0

    def layer_kind(self, layer: int) -> str:
        return LAYER_KINDS[self.layer_pattern[layer % len(self.layer_pattern)]]

    def layer_has_moe(self, layer: int) -> bool:
        return self.moe.num_experts > 0 and layer % self.moe.every == self.moe.every - 1
