"""Export to GGUF (llama.cpp's format, ``llama`` architecture) with the ``gguf`` package: F32, F16, Q8_0 or Q4_0.

Our RoPE rotates adjacent channel pairs, as llama.cpp's normal RoPE does, so Q and K are written as they
are (llama.cpp's own Hugging Face converter permutes them into this layout). Norm gains stay F32 (llama.cpp
keeps 1-D tensors in F32); under Q8_0 or Q4_0 a matrix whose rows are not a multiple of the 32-value block is
written F16. Q8_0 blocks come from ``gguf.quants``; Q4_0 blocks from :func:`q4_0_blocks`, our own port of
ggml's ``quantize_row_q4_0_ref`` (bit-identical to ``gguf.quants``; tests check both ways). Q4_K is not
written: gguf 0.19 only dequantizes K-quants (its ``quantize`` raises NotImplementedError for them).
MoE models use llama.cpp's Mixtral layout (``ffn_gate_inp`` and stacked ``*_exps``
tensors); μP's logit scale is folded into ``output`` (written untied). Mamba layers are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lmhpc.exchange.gguf_vocab import GGUFVocab, vocab_for_gguf
from lmhpc.exchange.hf import check_exportable
from lmhpc.exchange.weights import ModelWeights
from lmhpc.fsutil import atomic_path

if TYPE_CHECKING:
    from gguf import GGUFWriter

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")
QK4_0 = 32  # values per Q4_0 block: an fp16 scale and 16 bytes of 4-bit codes (18 bytes)
ARCH = "llama"


def gguf_tensors(weights: ModelWeights) -> dict[str, torch.Tensor]:
    """Our tensors under llama.cpp's names (torch layout: rows first)."""
    a, s = weights.args, weights.state
    out = {"token_embd.weight": s["tok_embeddings.weight"], "output_norm.weight": s["norm.weight"]}
    for i in range(a.n_layers):
        ours, blk = f"layers.{i}.", f"blk.{i}."
        out[blk + "attn_norm.weight"] = s[ours + "mixer_norm.weight"]
        out[blk + "ffn_norm.weight"] = s[ours + "ffn_norm.weight"]
        for name, gguf_name in (("wq", "attn_q"), ("wk", "attn_k"), ("wv", "attn_v"), ("wo", "attn_output")):
            out[blk + gguf_name + ".weight"] = s[f"{ours}attention.{name}.weight"]
        if a.layer_has_moe(i):
            out[blk + "ffn_gate_inp.weight"] = s[ours + "moe.gate.weight"]
            for name, gguf_name in (("w1", "ffn_gate_exps"), ("w3", "ffn_up_exps"), ("w2", "ffn_down_exps")):
                out[blk + gguf_name + ".weight"] = s[f"{ours}moe.{name}"].transpose(1, 2)  # (E, in, out) → (E, out, in)
        else:
            for name, gguf_name in (("w1", "ffn_gate"), ("w3", "ffn_up"), ("w2", "ffn_down")):
                out[blk + gguf_name + ".weight"] = s[f"{ours}feed_forward.{name}.weight"]
    if a.mup_base_dim:
        out["output.weight"] = s.get("output.weight", s["tok_embeddings.weight"]) / a.width_mult
    elif not a.tie_embeddings:
        out["output.weight"] = s["output.weight"]
    return out


def _add_metadata(w: GGUFWriter, weights: ModelWeights, name: str, qtype: str) -> None:
    import gguf

    a = weights.args
    w.add_name(name)
    w.add_context_length(a.max_seq_len)
    w.add_embedding_length(a.dim)
    w.add_block_count(a.n_layers)
    w.add_feed_forward_length(a.moe.expert_hidden if a.moe.num_experts and a.moe.expert_hidden else a.hidden_dim)
    w.add_head_count(a.n_heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(a.head_dim)
    w.add_rope_freq_base(a.rope_theta)
    w.add_layer_norm_rms_eps(a.norm_eps)
    w.add_vocab_size(a.vocab_size)
    if a.moe.num_experts:
        w.add_expert_count(a.moe.num_experts)
        w.add_expert_used_count(a.moe.top_k)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[qtype]
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_vocab(w: GGUFWriter, vocab: GGUFVocab) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.scores is not None:
        w.add_token_scores(vocab.scores)
    if vocab.merges is not None:
        w.add_token_merges(vocab.merges)
    for name, add in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                      ("pad", w.add_pad_token_id)):
        if name in vocab.special:
            add(vocab.special[name])
    w.add_add_bos_token(vocab.add_bos)
    w.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        w.add_chat_template(vocab.chat_template)


def q4_0_blocks(t: torch.Tensor) -> np.ndarray:
    """Q4_0 bytes of a (rows, cols) matrix, cols a multiple of 32: per block of 32 values ``d = m / -8`` (``m`` the
    value of largest magnitude, stored fp16) and codes ``min(15, trunc(x / d + 8.5))``, the first 16 in the low
    nibbles, the last 16 in the high nibbles. Shape (rows, cols / 32 * 18), uint8."""
    x = t.detach().to(torch.float32).reshape(t.shape[0], -1, QK4_0)
    imax = x.abs().argmax(dim=-1, keepdim=True)
    d = torch.gather(x, -1, imax) / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = torch.trunc(x * inv + 8.5).clamp(0, 15).to(torch.uint8)
    packed = q[..., :QK4_0 // 2] | (q[..., QK4_0 // 2:] << 4)
    scale = d.to(torch.float16).numpy().view(np.uint8)
    return np.concatenate([scale, packed.numpy()], axis=-1).reshape(t.shape[0], -1)


def q4_0_dequantize(blocks: np.ndarray) -> torch.Tensor:
    """The float32 matrix of Q4_0 bytes (rows, blocks * 18): ``d * (code - 8)``."""
    b = torch.from_numpy(np.ascontiguousarray(blocks).reshape(blocks.shape[0], -1, 18))
    d = b[..., :2].contiguous().view(torch.float16).to(torch.float32)
    qs = b[..., 2:]
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1).to(torch.float32) - 8
    return (d * codes).reshape(blocks.shape[0], -1)


def _encode(t: torch.Tensor, qtype: str) -> tuple[np.ndarray, object | None]:
    """The array to write and its raw GGML type (None: the writer's type for the array's dtype)."""
    import gguf

    data = t.detach().to(torch.float32).contiguous().numpy()
    if t.dim() == 1 or qtype == "f32":
        return data, None
    if qtype == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    if qtype == "q4_0" and data.shape[-1] % QK4_0 == 0:
        rows = t.detach().reshape(-1, t.shape[-1])
        blocks = q4_0_blocks(rows).reshape(*data.shape[:-1], -1)
        return blocks, gguf.GGMLQuantizationType.Q4_0
    return data.astype(np.float16), None


def write_gguf(weights: ModelWeights, out: Path, qtype: str = "f16", name: str | None = None) -> Path:
    """Write ``weights`` as a GGUF file ``out`` (atomically) with matrices in ``qtype`` (f32, f16, q8_0, q4_0)."""
    import gguf

    if qtype not in GGUF_TYPES:
        raise ValueError(f"GGUF type {qtype!r}: use one of {GGUF_TYPES}")
    check_exportable(weights.args, "GGUF")
    vocab = vocab_for_gguf(weights.tokenizer_files, weights.args.vocab_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        _add_metadata(writer, weights, name or out.stem, qtype)
        _add_vocab(writer, vocab)
        tensors = gguf_tensors(weights)
        for tensor_name, tensor in tensors.items():
            data, raw = _encode(tensor, qtype)
            if raw is None:
                writer.add_tensor(tensor_name, data)
            else:
                writer.add_tensor(tensor_name, data, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log.info("wrote %s (%s, %d tensors)", out, qtype, len(tensors))
    return out
