"""Hugging Face export and import, checked against transformers itself: ``LlamaForCausalLM`` (and
``MixtralForCausalLM``) loads our export with the same logits (fp32, max |Δ| ≤ 1e-4) and the same greedy
continuation; a wrong RoPE layout is visible (Q and K are scaled up ×15 in these models)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from lmhpc.exchange import load_model
from lmhpc.exchange.hf import UnsupportedModel, from_hf_rotary, read_hf, to_hf_rotary, write_hf
from lmhpc.exchange.load import build_model
from lmhpc.model.args import MoEArgs
from tests.exchange.conftest import MIXED_TEXT, tiny_weights, token_batch
from tests.helpers import import_peer

TOLERANCE = 1e-4


def transformers() -> ModuleType:
    return import_peer("transformers")


def hf_logits(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    model = transformers().AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def greedy(model, tokens: torch.Tensor, steps: int) -> list[int]:
    out = tokens[0].tolist()
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[tokens.shape[1]:]


@pytest.mark.parametrize("variant", ["dense", "tied", "moe", "mup"])
def test_transformers_loads_our_export_with_our_logits(tmp_path: Path, sp_tokenizer: Path, variant: str) -> None:
    options = {"dense": {}, "tied": {"tie_embeddings": True},
               "moe": {"moe": MoEArgs(num_experts=4, top_k=2, capacity_factor=0.0)},
               "mup": {"mup_base_dim": 32, "tie_embeddings": True}}[variant]
    model, weights = tiny_weights(sp_tokenizer, **options)
    out = write_hf(weights, tmp_path / "hf")
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        ours = model(x)
    theirs = hf_logits(out, x)
    assert (ours - theirs).abs().max().item() <= TOLERANCE
    hf_model = transformers().AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf_model).__name__ == ("MixtralForCausalLM" if variant == "moe" else "LlamaForCausalLM")
    assert greedy(model, x[:1, :8], 12) == greedy(lambda t: hf_model(t).logits, x[:1, :8], 12)


def test_the_parity_test_sees_a_wrong_rope_layout(tmp_path: Path, sp_tokenizer: Path) -> None:
    model, weights = tiny_weights(sp_tokenizer)
    for name, tensor in list(weights.state.items()):  # undo the export's Q/K permutation
        heads = model.args.n_heads if name.endswith("wq.weight") else model.args.kv_heads
        if name.endswith(("wq.weight", "wk.weight")):
            weights.state[name] = from_hf_rotary(tensor, heads)
    out = write_hf(weights, tmp_path / "hf")
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        error = (model(x) - hf_logits(out, x)).abs().max().item()
    assert error > 100 * TOLERANCE


def test_rotary_permutation_round_trips() -> None:
    w = torch.arange(4 * 8 * 3, dtype=torch.float32).reshape(32, 3)
    assert torch.equal(from_hf_rotary(to_hf_rotary(w, 4), 4), w)
    # head 0's rows: ours pair (0,1), (2,3), ...; HF's first half holds the pairs' first elements
    assert to_hf_rotary(w, 4)[:4, 0].tolist() == [0.0, 6.0, 12.0, 18.0]


def test_transformers_reads_our_tokenizer_as_we_do(tmp_path: Path, sp_tokenizer: Path) -> None:
    _, weights = tiny_weights(sp_tokenizer)
    out = write_hf(weights, tmp_path / "hf")
    ours = load_model(out).tokenizer
    theirs = transformers().AutoTokenizer.from_pretrained(out)
    assert theirs(MIXED_TEXT, add_special_tokens=False).input_ids == ours.encode(MIXED_TEXT)


def test_import_of_a_transformers_model(tmp_path: Path, sp_tokenizer: Path) -> None:
    """A (sharded) folder written by transformers' own save_pretrained imports with its logits."""
    tf = transformers()
    config = tf.LlamaConfig(vocab_size=800, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                            rope_theta=5e4, rms_norm_eps=1e-6, tie_word_embeddings=False)
    torch.manual_seed(1)
    hf_model = tf.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in hf_model.model.layers:
            layer.self_attn.q_proj.weight.mul_(15)
            layer.self_attn.k_proj.weight.mul_(15)
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="200KB")  # several files and an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "hf" / name).write_bytes((sp_tokenizer / name).read_bytes())

    loaded = load_model(tmp_path / "hf")
    assert loaded.args.rope_theta == 5e4 and loaded.args.norm_eps == 1e-6 and loaded.args.ffn_hidden == 160
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        assert (loaded.model(x) - hf_model(x).logits).abs().max().item() <= TOLERANCE
    assert loaded.tokenizer.encode("the quick brown fox") == \
        tf.AutoTokenizer.from_pretrained(tmp_path / "hf")("the quick brown fox", add_special_tokens=False).input_ids


def test_import_of_a_transformers_mixtral(tmp_path: Path, sp_tokenizer: Path) -> None:
    tf = transformers()
    config = tf.MixtralConfig(vocab_size=800, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                              max_position_embeddings=128, sliding_window=None)
    torch.manual_seed(2)
    hf_model = tf.MixtralForCausalLM(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    weights = read_hf(tmp_path / "hf")
    assert weights.args.moe.num_experts == 4 and weights.args.moe.top_k == 2 and weights.args.moe.expert_hidden == 96
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        assert (build_model(weights).eval()(x) - hf_model(x).logits).abs().max().item() <= TOLERANCE


def test_export_import_round_trip_is_exact(tmp_path: Path, sp_tokenizer: Path) -> None:
    model, weights = tiny_weights(sp_tokenizer, moe=MoEArgs(num_experts=4, top_k=2, capacity_factor=0.0))
    back = build_model(read_hf(write_hf(weights, tmp_path / "hf")))
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


@pytest.mark.parametrize("options, message", [
    ({"layer_pattern": "AM"}, "Mamba"),
    ({"moe": MoEArgs(num_experts=4, router="hash")}, "hash"),
    ({"moe": MoEArgs(num_experts=4, every=2)}, "every 2"),
])
def test_what_llama_cannot_hold_is_refused(tmp_path: Path, sp_tokenizer: Path, options: dict, message: str) -> None:
    _, weights = tiny_weights(sp_tokenizer, **options)
    with pytest.raises(UnsupportedModel, match=message):
        write_hf(weights, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
