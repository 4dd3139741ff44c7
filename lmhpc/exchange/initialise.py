"""Start a training run from existing weights (``pretrain.init_from``): any model :func:`read_weights` reads.

The run's model must have the same parameter shapes; settings that shape no parameter (RoPE θ, norm ε,
sequence length, initialisation, μP base width) are the run's own.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lmhpc.exchange.load import load_state_into, read_weights
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer

log = logging.getLogger(__name__)


def shape_of(args: ModelArgs) -> dict[str, object]:
    """The settings that decide the model's parameter shapes."""
    shape: dict[str, object] = {
        "vocab_size": args.vocab_size, "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "n_kv_heads": args.kv_heads, "ffn_hidden": args.hidden_dim, "tie_embeddings": args.tie_embeddings,
        "layer_pattern": "".join(args.layer_pattern[i % len(args.layer_pattern)] for i in range(args.n_layers)),
        "moe.num_experts": args.moe.num_experts,
    }
    if args.moe.num_experts:
        shape.update({"moe.every": args.moe.every, "moe.router": args.moe.router,
                      "moe.expert_hidden": args.moe.expert_hidden or args.hidden_dim})
    if "M" in args.layer_pattern:
        m = args.mamba
        shape.update({"mamba.d_state": m.d_state, "mamba.d_conv": m.d_conv, "mamba.expand": m.expand,
                      "mamba.dt_rank": m.resolved_dt_rank(args.dim)})
    return shape


def initialise_from(model: Transformer, path: Path) -> None:
    """Copy the weights at ``path`` into ``model`` (the whole, unsharded model), refusing other shapes."""
    weights = read_weights(path)
    ours, theirs = shape_of(model.args), shape_of(weights.args)
    differences = [f"model.{k}: {theirs.get(k)} in {path}, {ours.get(k)} in this run"
                   for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differences:
        raise ValueError("pretrain.init_from: the model to start from has another shape: " + "; ".join(differences))
    load_state_into(model, weights)
    log.info("model initialised from %s", path)
