"""Hugging Face ``LlamaForCausalLM`` (and ``MixtralForCausalLM``) folders: export and import.

Export writes ``model.safetensors``, ``config.json``, ``generation_config.json`` and the tokenizer files
(our sentencepiece model gets its ``tokenizer.json`` from :mod:`lmhpc.tokenizer.hf_export`), which
``transformers`` loads with ``AutoModelForCausalLM`` / ``AutoTokenizer``.

Layout differences handled here:

- RoPE: our attention rotates adjacent channel pairs (llama.cpp's layout); Hugging Face's ``rotate_half``
  pairs channel ``j`` with ``j + head_dim/2``. The rows of Q and K are permuted per head so both compute
  the same scores.
- MoE: our experts are stacked ``(experts, in, out)`` tensors; Mixtral stores one ``(out, in)`` linear
  per expert. Our top-k router (softmax, top k, renormalised) is Mixtral's. Hash routing and models with
  dense layers between MoE layers have no Mixtral form and are refused. Mixtral never drops tokens, so
  the exported model equals ours where no expert reaches its capacity (always with ``capacity_factor <= 0``).
- μP: our logits are divided by the width multiplier; the division is folded into ``lm_head`` (which is
  then written untied from the embedding).
- Mamba layers have no Llama form and are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lmhpc.exchange.weights import ModelWeights, output_folder, read_tokenizer_files, write_tokenizer_files
from lmhpc.model.args import ModelArgs, MoEArgs

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM"}


class UnsupportedModel(ValueError):
    """The model has a part the target format cannot express."""


def is_hf_folder(path: Path) -> bool:
    return (path / CONFIG).is_file() and ((path / WEIGHTS).is_file() or (path / INDEX).is_file())


def to_hf_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Q/K projection rows from adjacent-pair RoPE (ours) to half-split RoPE (Hugging Face's ``rotate_half``)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def from_hf_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`to_hf_rotary`."""
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def check_exportable(args: ModelArgs, target: str) -> None:
    """Raise :class:`UnsupportedModel` naming what ``target`` (Hugging Face, GGUF) cannot hold."""
    if "M" in args.layer_pattern:
        raise UnsupportedModel(f"Mamba layers (model.layer_pattern={args.layer_pattern!r}) have no Llama-style "
                               f"{target} equivalent; only attention-only models export")
    if args.moe.num_experts:
        if args.moe.router != "topk":
            raise UnsupportedModel(f"MoE with {args.moe.router!r} routing has no Mixtral-style {target} equivalent "
                                   "(Mixtral routes with a learned top-k softmax router)")
        if args.moe.every != 1:
            raise UnsupportedModel(f"MoE on every {args.moe.every}th layer only: Mixtral-style {target} models have "
                                   "MoE in every layer")


# --------------------------------------------------------------------------------------------- export

def hf_config(args: ModelArgs, token_ids: dict[str, int | None], dtype: torch.dtype) -> dict[str, Any]:
    """``config.json`` of the exported model."""
    moe = args.moe.num_experts > 0
    kind = "mixtral" if moe else "llama"
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[kind]],
        "model_type": kind,
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": (args.moe.expert_hidden or args.hidden_dim) if moe else args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": args.init_std,
        "tie_word_embeddings": args.tie_embeddings and not args.mup_base_dim,
        "dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        **{f"{name}_token_id": token_ids.get(name) for name in ("bos", "eos", "pad")},
    }
    if moe:
        config.update({"num_local_experts": args.moe.num_experts, "num_experts_per_tok": args.moe.top_k,
                       "router_aux_loss_coef": args.moe.load_balance_coef, "output_router_logits": False,
                       "router_jitter_noise": 0.0, "sliding_window": None})
    else:
        config["mlp_bias"] = False
    return config


def hf_state(weights: ModelWeights) -> dict[str, torch.Tensor]:
    """Our tensors under Hugging Face names and layouts."""
    a, s = weights.args, weights.state
    out = {"model.embed_tokens.weight": s["tok_embeddings.weight"], "model.norm.weight": s["norm.weight"]}
    for i in range(a.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = s[ours + "mixer_norm.weight"]
        out[hf + "post_attention_layernorm.weight"] = s[ours + "ffn_norm.weight"]
        out[hf + "self_attn.q_proj.weight"] = to_hf_rotary(s[ours + "attention.wq.weight"], a.n_heads)
        out[hf + "self_attn.k_proj.weight"] = to_hf_rotary(s[ours + "attention.wk.weight"], a.kv_heads)
        out[hf + "self_attn.v_proj.weight"] = s[ours + "attention.wv.weight"]
        out[hf + "self_attn.o_proj.weight"] = s[ours + "attention.wo.weight"]
        if a.layer_has_moe(i):
            out[hf + "block_sparse_moe.gate.weight"] = s[ours + "moe.gate.weight"]
            for e in range(a.moe.num_experts):
                expert = f"{hf}block_sparse_moe.experts.{e}."
                for name in ("w1", "w2", "w3"):  # ours (in, out) → a linear's (out, in)
                    out[expert + name + ".weight"] = s[f"{ours}moe.{name}"][e].t()
        else:
            out[hf + "mlp.gate_proj.weight"] = s[ours + "feed_forward.w1.weight"]
            out[hf + "mlp.up_proj.weight"] = s[ours + "feed_forward.w3.weight"]
            out[hf + "mlp.down_proj.weight"] = s[ours + "feed_forward.w2.weight"]
    if a.mup_base_dim:
        out["lm_head.weight"] = s.get("output.weight", s["tok_embeddings.weight"]) / a.width_mult
    elif not a.tie_embeddings:
        out["lm_head.weight"] = s["output.weight"]
    return out


def _hf_tokenizer_files(files: dict[str, bytes], folder: Path) -> None:
    """Write the tokenizer into ``folder``, with a ``tokenizer.json`` made from a sentencepiece model if needed.

    ``tokenizer_class`` is the generic ``PreTrainedTokenizerFast``, which runs ``tokenizer.json`` as written:
    transformers 5 rebuilds a ``LlamaTokenizerFast``'s pre-tokenizer itself, which loses the split that keeps
    our user tokens (chat markers) whole."""
    write_tokenizer_files(files, folder)
    config_path = folder / "tokenizer_config.json"
    if "tokenizer.json" not in files and "tokenizer.model" in files:
        from lmhpc.tokenizer.hf_export import write_hf_tokenizer

        template = json.loads(files["tokenizer_config.json"]).get("chat_template") \
            if "tokenizer_config.json" in files else None
        write_hf_tokenizer(folder / "tokenizer.model", folder)
        if template is not None:
            config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "chat_template": template},
                                              ensure_ascii=False, indent=2) + "\n")
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def write_hf(weights: ModelWeights, out: Path, dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Export ``weights`` as a Hugging Face folder ``out`` (written atomically)."""
    from safetensors.torch import save_file

    from lmhpc.exchange.tokenizer import load_tokenizer

    check_exportable(weights.args, "Hugging Face")
    state = {k: v.to(dtype).contiguous() for k, v in hf_state(weights).items()}
    with output_folder(out, overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        token_ids: dict[str, int | None] = {}
        if weights.tokenizer_files:
            _hf_tokenizer_files(weights.tokenizer_files, tmp)
            tok = load_tokenizer(tmp)
            token_ids = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
        config = hf_config(weights.args, token_ids, dtype)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {k: v for k, v in config.items() if k.endswith("_token_id") and v is not None}
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    return Path(out)


# --------------------------------------------------------------------------------------------- import

def _read_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (folder / INDEX).is_file():
        files = sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))
    else:
        files = [WEIGHTS]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def args_from_hf_config(config: dict[str, Any], where: str) -> ModelArgs:
    """Our :class:`ModelArgs` for a Llama / Mixtral ``config.json``; other variants are refused by name."""
    kind = config.get("model_type")
    if kind not in ARCHITECTURES:
        raise UnsupportedModel(f"{where}: model_type {kind!r} is not supported (only {sorted(ARCHITECTURES)})")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UnsupportedModel(f"{where}: RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not "
                               "supported (plain RoPE only)")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            raise UnsupportedModel(f"{where}: {key} is set; our model has no biases")
    if config.get("hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"{where}: hidden_act {config['hidden_act']!r} (our FFN is SwiGLU with silu)")
    dim, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise UnsupportedModel(f"{where}: head_dim {head_dim} × {heads} heads != hidden_size {dim}")
    moe = MoEArgs()
    if kind == "mixtral":
        if config.get("sliding_window"):
            raise UnsupportedModel(f"{where}: sliding-window attention is not supported")
        moe = MoEArgs(num_experts=config["num_local_experts"], top_k=config["num_experts_per_tok"],
                      expert_hidden=config["intermediate_size"], capacity_factor=0.0)
    return ModelArgs(
        vocab_size=config["vocab_size"], dim=dim, n_layers=config["num_hidden_layers"], n_heads=heads,
        n_kv_heads=config.get("num_key_value_heads") or heads, ffn_hidden=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)), moe=moe,
    )


def _our_experts(s: dict[str, torch.Tensor], hf: str, num_experts: int) -> dict[str, torch.Tensor]:
    """A Mixtral layer's per-expert linears as our stacked ``(experts, in, out)`` tensors."""
    return {name: torch.stack([s.pop(f"{hf}block_sparse_moe.experts.{e}.{name}.weight").t()
                               for e in range(num_experts)])
            for name in ("w1", "w2", "w3")}


def our_state(hf_tensors: dict[str, torch.Tensor], a: ModelArgs) -> dict[str, torch.Tensor]:
    """Hugging Face Llama / Mixtral tensors under our names and layouts; a tensor left over is an error."""
    s = dict(hf_tensors)
    out = {"tok_embeddings.weight": s.pop("model.embed_tokens.weight"), "norm.weight": s.pop("model.norm.weight")}
    for i in range(a.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        out[ours + "mixer_norm.weight"] = s.pop(hf + "input_layernorm.weight")
        out[ours + "ffn_norm.weight"] = s.pop(hf + "post_attention_layernorm.weight")
        out[ours + "attention.wq.weight"] = from_hf_rotary(s.pop(hf + "self_attn.q_proj.weight"), a.n_heads)
        out[ours + "attention.wk.weight"] = from_hf_rotary(s.pop(hf + "self_attn.k_proj.weight"), a.kv_heads)
        out[ours + "attention.wv.weight"] = s.pop(hf + "self_attn.v_proj.weight")
        out[ours + "attention.wo.weight"] = s.pop(hf + "self_attn.o_proj.weight")
        if a.layer_has_moe(i):
            out[ours + "moe.gate.weight"] = s.pop(hf + "block_sparse_moe.gate.weight")
            for name, w in _our_experts(s, hf, a.moe.num_experts).items():
                out[f"{ours}moe.{name}"] = w.contiguous()
        else:
            out[ours + "feed_forward.w1.weight"] = s.pop(hf + "mlp.gate_proj.weight")
            out[ours + "feed_forward.w3.weight"] = s.pop(hf + "mlp.up_proj.weight")
            out[ours + "feed_forward.w2.weight"] = s.pop(hf + "mlp.down_proj.weight")
    head = s.pop("lm_head.weight", None)
    if head is not None and not a.tie_embeddings:
        out["output.weight"] = head
    elif head is None and not a.tie_embeddings:
        raise ValueError("lm_head.weight is missing and tie_word_embeddings is false")
    if s:
        raise ValueError(f"tensors with no place in the model: {sorted(s)[:8]}")
    return out


def read_hf(folder: Path) -> ModelWeights:
    """A Hugging Face Llama / Mixtral folder as our weights, with its tokenizer files."""
    folder = Path(folder)
    config = json.loads((folder / CONFIG).read_text())
    args = args_from_hf_config(config, str(folder / CONFIG))
    state = our_state(_read_state(folder), args)
    return ModelWeights(state, args, read_tokenizer_files(folder), folder,
                        {"format": "hf", "architecture": (config.get("architectures") or [None])[0]})

