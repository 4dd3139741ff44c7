"""Import a GGUF file (``llama`` architecture, any type ``gguf`` dequantises) into our weights and tokenizer.

Tensors are dequantised to float32 with ``gguf.quants.dequantize``; their layout is already ours (llama.cpp
pairs adjacent RoPE channels, as we do). The tokenizer is rebuilt from ``tokenizer.ggml.*``
(:mod:`lmhpc.exchange.gguf_vocab`): a sentencepiece model, or a byte-level BPE ``tokenizer.json`` with the
file's chat template. Variants our model cannot express (RoPE scaling, partial rotary dimensions, a head
size other than ``dim / heads``) are refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmhpc.exchange.gguf_vocab import GGUFVocab, tokenizer_files
from lmhpc.exchange.hf import UnsupportedModel
from lmhpc.exchange.weights import ModelWeights
from lmhpc.model.args import ModelArgs, MoEArgs

ARCH = "llama"


def _fields(reader: Any) -> dict[str, Any]:
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _f32(value: Any) -> float:
    """A float32 from the file as the shortest decimal that reads back to it (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def args_from_gguf(meta: dict[str, Any], embedding_rows: int, tied: bool, where: str) -> ModelArgs:
    """Our :class:`ModelArgs` for a GGUF ``llama`` file's metadata."""
    arch = meta.get("general.architecture")
    if arch != ARCH:
        raise UnsupportedModel(f"{where}: architecture {arch!r}; only {ARCH!r} GGUF files import")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{ARCH}.{key}", default)
        if value is None:
            raise ValueError(f"{where}: {ARCH}.{key} is missing")
        return value

    dim, heads = int(get("embedding_length")), int(get("attention.head_count"))
    eps, theta = (_f32(v) for v in (get("attention.layer_norm_rms_epsilon"), meta.get(f"{ARCH}.rope.freq_base", 1e4)))
    head_dim = dim // heads
    scaling = meta.get(f"{ARCH}.rope.scaling.type", "none")
    if scaling not in ("none", "linear") or (scaling == "linear" and meta.get(f"{ARCH}.rope.scaling.factor", 1) != 1):
        raise UnsupportedModel(f"{where}: RoPE scaling {scaling!r} is not supported (plain RoPE only)")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if f"{ARCH}.{key}" in meta and int(meta[f"{ARCH}.{key}"]) != head_dim:
            raise UnsupportedModel(f"{where}: {ARCH}.{key} = {meta[f'{ARCH}.{key}']}, but our heads are "
                                   f"dim / heads = {head_dim} wide and fully rotary")
    kv_heads = meta.get(f"{ARCH}.attention.head_count_kv", heads)
    if isinstance(heads, (list, np.ndarray)) or isinstance(kv_heads, (list, np.ndarray)):
        raise UnsupportedModel(f"{where}: per-layer head counts are not supported")
    experts = int(meta.get(f"{ARCH}.expert_count", 0))
    ffn = int(get("feed_forward_length"))
    moe = MoEArgs(num_experts=experts, top_k=int(meta.get(f"{ARCH}.expert_used_count", 2)), expert_hidden=ffn,
                  capacity_factor=0.0) if experts else MoEArgs()
    return ModelArgs(vocab_size=embedding_rows, dim=dim, n_layers=int(get("block_count")), n_heads=heads,
                     n_kv_heads=int(kv_heads), ffn_hidden=ffn, norm_eps=eps, rope_theta=theta,
                     max_seq_len=int(get("context_length")), tie_embeddings=tied, moe=moe)


def vocab_from_gguf(meta: dict[str, Any]) -> GGUFVocab:
    """The ``tokenizer.ggml.*`` entries of a GGUF file."""
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        raise ValueError("the GGUF file has no tokenizer (tokenizer.ggml.model)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    special = {name: int(meta[f"tokenizer.ggml.{key}_token_id"])
               for name, key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding"))
               if f"tokenizer.ggml.{key}_token_id" in meta}
    scores = meta.get("tokenizer.ggml.scores")
    merges = meta.get("tokenizer.ggml.merges")
    return GGUFVocab(model=str(model), pre=str(meta.get("tokenizer.ggml.pre", "default")), tokens=tokens,
                     types=[int(t) for t in meta.get("tokenizer.ggml.token_type", [1] * len(tokens))],
                     scores=[float(s) for s in scores] if scores is not None else None,
                     merges=list(merges) if merges is not None else None, special=special,
                     add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")),
                     add_eos=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                     add_space_prefix=bool(meta.get("tokenizer.ggml.add_space_prefix", model == "llama")),
                     chat_template=meta.get("tokenizer.chat_template"))


def _ours(name: str) -> str:
    """Our parameter name for a llama.cpp tensor name (raises KeyError for one we have no place for)."""
    fixed = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
             "output.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[3] != "weight":
        raise KeyError(name)
    i, kind = parts[1], parts[2]
    per_layer = {"attn_norm": "mixer_norm.weight", "ffn_norm": "ffn_norm.weight",
                 "attn_q": "attention.wq.weight", "attn_k": "attention.wk.weight", "attn_v": "attention.wv.weight",
                 "attn_output": "attention.wo.weight", "ffn_gate": "feed_forward.w1.weight",
                 "ffn_up": "feed_forward.w3.weight", "ffn_down": "feed_forward.w2.weight",
                 "ffn_gate_inp": "moe.gate.weight", "ffn_gate_exps": "moe.w1", "ffn_up_exps": "moe.w3",
                 "ffn_down_exps": "moe.w2"}
    return f"layers.{i}.{per_layer[kind]}"


def read_gguf(path: Path) -> ModelWeights:
    """A GGUF file's weights (dequantised to float32), shape and tokenizer files."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(path)
    meta = _fields(reader)
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        try:
            name = _ours(t.name)
        except KeyError:
            raise UnsupportedModel(f"{path}: tensor {t.name} has no place in our model") from None
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        tensor = torch.from_numpy(np.array(data, dtype=np.float32))  # a copy: the reader maps the file read-only
        if name.endswith(("moe.w1", "moe.w3", "moe.w2")):
            tensor = tensor.transpose(1, 2).contiguous()  # (E, out, in) → our (E, in, out)
        state[name] = tensor
    tied = "output.weight" not in state
    args = args_from_gguf(meta, state["tok_embeddings.weight"].shape[0], tied, str(path))
    files = tokenizer_files(vocab_from_gguf(meta))
    return ModelWeights(state, args, files, path, {"format": "gguf", "name": meta.get("general.name"),
                                                   "file_type": meta.get("general.file_type")})
