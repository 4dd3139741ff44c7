"""Weights between our Transformer and megatron-core's ``GPTModel`` (both ways, exact).

megatron-core's names and layouts, for the local layer spec (``get_gpt_layer_local_spec``) and the
Transformer Engine spec (``get_gpt_layer_with_transformer_engine_spec``):

- ``embedding.word_embeddings.weight`` = ``tok_embeddings.weight``; ``output_layer.weight`` = ``output.weight``
  (absent when the embeddings are tied: ``share_embeddings_and_output_weights``);
- ``decoder.layers.<i>.self_attention.linear_qkv.weight``: Q, K and V fused, grouped by key/value head: for
  each of the ``kv_heads`` query groups, its ``n_heads / kv_heads`` query heads, then its key head, then its
  value head (``head_dim`` rows each); ``linear_proj.weight`` = ``wo``;
- ``decoder.layers.<i>.mlp.linear_fc1.weight`` = ``[w1; w3]`` (SwiGLU: gate rows, then up rows);
  ``linear_fc2.weight`` = ``w2``;
- norms: ``input_layernorm.weight`` / ``pre_mlp_layernorm.weight`` under the local spec; under the TE spec
  they are folded into the next linear layer as ``linear_qkv.layer_norm_weight`` /
  ``linear_fc1.layer_norm_weight``; ``decoder.final_layernorm.weight`` = ``norm.weight`` in both;
- RoPE: ours rotates adjacent channel pairs; megatron-core's default (``rotary_interleaved=False``) pairs
  channel ``j`` with ``j + head_dim/2``: the rows of Q and K are permuted per head (as for Hugging Face), so
  megatron runs its default, fused RoPE path.

Mixture-of-Experts and Mamba layers, and μP, have no translation here (:class:`UnsupportedModel`).
"""

from __future__ import annotations

import re

import torch

from lmhpc.exchange.hf import UnsupportedModel
from lmhpc.model.args import ModelArgs

SPECS = ("local", "te")


def check_convertible(args: ModelArgs) -> None:
    """Refuse a model megatron-core's GPT model cannot hold with the same function."""
    if args.moe.num_experts:
        raise UnsupportedModel("MoE layers (model.moe.num_experts > 0) have no megatron-core translation here: "
                               "our router drops tokens past a capacity and routes in token order")
    if set(args.layer_pattern) != {"A"}:
        raise UnsupportedModel(f"model.layer_pattern={args.layer_pattern!r}: Mamba layers have no megatron-core "
                               "GPT translation (attention layers only)")
    if args.mup_base_dim:
        raise UnsupportedModel("μP (model.mup_base_dim > 0) has no megatron-core equivalent")


def _to_half_split(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """Rows of each head from adjacent-pair RoPE order to half-split order."""
    return w.reshape(heads, head_dim // 2, 2, -1).transpose(1, 2).reshape(heads * head_dim, -1)


def _to_pairs(w: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    return w.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(heads * head_dim, -1)


def fuse_qkv(wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Megatron's ``linear_qkv`` weight from our Q, K, V (RoPE rows permuted)."""
    hd, groups = args.head_dim, args.kv_heads
    per = args.n_heads // groups
    q = _to_half_split(wq, args.n_heads, hd).reshape(groups, per * hd, -1)
    k = _to_half_split(wk, groups, hd).reshape(groups, hd, -1)
    v = wv.reshape(groups, hd, -1)
    return torch.cat([q, k, v], dim=1).reshape((args.n_heads + 2 * groups) * hd, -1)


def split_qkv(qkv: torch.Tensor, args: ModelArgs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Our Q, K, V from megatron's ``linear_qkv`` weight."""
    hd, groups = args.head_dim, args.kv_heads
    per = args.n_heads // groups
    q, k, v = qkv.reshape(groups, (per + 2) * hd, -1).split([per * hd, hd, hd], dim=1)
    return (_to_pairs(q.reshape(args.n_heads * hd, -1), args.n_heads, hd),
            _to_pairs(k.reshape(groups * hd, -1), groups, hd), v.reshape(groups * hd, -1).clone())


def to_megatron(state: dict[str, torch.Tensor], args: ModelArgs, spec: str = "local") -> dict[str, torch.Tensor]:
    """megatron-core GPTModel weights (``spec``: ``local`` or ``te``) from our state dict."""
    if spec not in SPECS:
        raise ValueError(f"spec must be one of {SPECS}, got {spec!r}")
    check_convertible(args)
    te = spec == "te"
    out = {"embedding.word_embeddings.weight": state["tok_embeddings.weight"],
           "decoder.final_layernorm.weight": state["norm.weight"]}
    if not args.tie_embeddings:
        out["output_layer.weight"] = state["output.weight"]
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"decoder.layers.{i}."
        att, mlp = theirs + "self_attention.", theirs + "mlp."
        out[att + "linear_qkv.weight"] = fuse_qkv(state[ours + "attention.wq.weight"],
                                                  state[ours + "attention.wk.weight"],
                                                  state[ours + "attention.wv.weight"], args)
        out[att + "linear_proj.weight"] = state[ours + "attention.wo.weight"]
        out[mlp + "linear_fc1.weight"] = torch.cat([state[ours + "feed_forward.w1.weight"],
                                                    state[ours + "feed_forward.w3.weight"]])
        out[mlp + "linear_fc2.weight"] = state[ours + "feed_forward.w2.weight"]
        out[(att + "linear_qkv.layer_norm_weight") if te else (theirs + "input_layernorm.weight")] = \
            state[ours + "mixer_norm.weight"]
        out[(mlp + "linear_fc1.layer_norm_weight") if te else (theirs + "pre_mlp_layernorm.weight")] = \
            state[ours + "ffn_norm.weight"]
    return out


def megatron_spec_of(state: dict[str, torch.Tensor]) -> str:
    """``te`` when the norms are folded into the linear layers, else ``local``."""
    return "te" if any(k.endswith("linear_qkv.layer_norm_weight") for k in state) else "local"


_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def from_megatron(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our state dict from megatron-core GPTModel weights (either spec; ``_extra_state`` entries ignored).
    A tied output projection is left out, as :class:`~lmhpc.exchange.weights.ModelWeights` stores it."""
    check_convertible(args)
    state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    layers = {int(m.group(1)) for k in state if (m := _LAYER.match(k))}
    if layers != set(range(args.n_layers)):
        raise ValueError(f"megatron weights hold layers {sorted(layers)[:4]}…, model.n_layers={args.n_layers}")
    te = megatron_spec_of(state) == "te"
    out = {"tok_embeddings.weight": state["embedding.word_embeddings.weight"],
           "norm.weight": state["decoder.final_layernorm.weight"]}
    if not args.tie_embeddings:
        if "output_layer.weight" not in state:
            raise ValueError("megatron weights have no output_layer.weight but model.tie_embeddings is false")
        out["output.weight"] = state["output_layer.weight"]
    for i in range(args.n_layers):
        ours, theirs = f"layers.{i}.", f"decoder.layers.{i}."
        att, mlp = theirs + "self_attention.", theirs + "mlp."
        wq, wk, wv = split_qkv(state[att + "linear_qkv.weight"], args)
        out.update({ours + "attention.wq.weight": wq, ours + "attention.wk.weight": wk,
                    ours + "attention.wv.weight": wv, ours + "attention.wo.weight": state[att + "linear_proj.weight"]})
        w1, w3 = state[mlp + "linear_fc1.weight"].chunk(2)
        out.update({ours + "feed_forward.w1.weight": w1.clone(), ours + "feed_forward.w3.weight": w3.clone(),
                    ours + "feed_forward.w2.weight": state[mlp + "linear_fc2.weight"]})
        out[ours + "mixer_norm.weight"] = state[(att + "linear_qkv.layer_norm_weight") if te
                                                else (theirs + "input_layernorm.weight")]
        out[ours + "ffn_norm.weight"] = state[(mlp + "linear_fc1.layer_norm_weight") if te
                                              else (theirs + "pre_mlp_layernorm.weight")]
    return out


# ---------------------------------------------------------------------------------------------
# megatron-core distributed checkpoints (the megatron backend's step folders)

CHECKPOINT_SUBDIR = "megatron"  # inside checkpoints/step-<N>/, next to train_state.json and COMPLETE


def unstack_layers(plain: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """A distributed checkpoint's whole tensors (``load_plain_tensors``) in GPTModel state-dict naming.

    megatron-core stores the decoder layers stacked, ``decoder.layers.<name>`` with a leading axis over the
    global layers (whatever the pipeline layout), and the norms under Transformer Engine names whatever the
    spec; ``_extra_state`` entries and optimizer states are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in plain.items():
        if key.endswith("_extra_state") or not torch.is_tensor(value) or key.startswith("optimizer"):
            continue
        if key.startswith("decoder.layers.") and not _LAYER.match(key):
            if value.shape[0] != n_layers:
                raise ValueError(f"{key}: {value.shape[0]} stacked layers, model.n_layers={n_layers}")
            rest = key[len("decoder.layers."):]
            for i in range(n_layers):
                out[f"decoder.layers.{i}.{rest}"] = value[i]
        else:
            out[key] = value
    return out


def read_megatron_checkpoint(step_dir, args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our state dict from a megatron backend checkpoint step folder (``step-<N>/megatron``)."""
    from pathlib import Path

    from megatron.core import dist_checkpointing

    folder = Path(step_dir) / CHECKPOINT_SUBDIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist (not a megatron backend checkpoint)")
    import torch.distributed as dist

    created = not dist.is_initialized()
    if created:  # megatron's loader runs collectives: a one-process group will do
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        plain = dist_checkpointing.load_plain_tensors(str(folder))
    finally:
        if created:
            dist.destroy_process_group()
    return from_megatron(unstack_layers(plain, args.n_layers), args)


def read_megatron_step(step_dir):
    """A megatron backend step folder as :class:`~lmhpc.exchange.weights.ModelWeights` (our names, the
    shape from ``train_state.json``, the run's tokenizer files), ready for the consolidated / Hugging Face /
    GGUF writers."""
    from pathlib import Path

    from lmhpc.exchange.pretrain_checkpoint import step_model_args, step_tokenizer_folder
    from lmhpc.exchange.weights import ModelWeights, read_tokenizer_files

    step = Path(step_dir)
    args = step_model_args(step)
    tokenizer = step_tokenizer_folder(step)
    return ModelWeights(read_megatron_checkpoint(step, args), args,
                        read_tokenizer_files(tokenizer) if tokenizer else {}, step,
                        {"format": "megatron", "step": int(step.name.rpartition("-")[2])})
