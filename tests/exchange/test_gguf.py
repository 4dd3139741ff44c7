"""GGUF export and import: the file read back with ``gguf``'s reader and dequantised reproduces our logits, and so
does transformers' own GGUF loader (an independent reader that converts llama.cpp's RoPE layout to its own, so
a wrong Q/K layout in our file shows: Q and K are scaled up ×15 in these models)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch

from lmhpc.exchange import load_model
from lmhpc.exchange.gguf_export import write_gguf
from lmhpc.exchange.gguf_vocab import BYTE, CONTROL, NORMAL, UNUSED, USER_DEFINED
from lmhpc.exchange.hf import UnsupportedModel, to_hf_rotary
from lmhpc.exchange.load import build_model, read_weights
from lmhpc.exchange.tokenizer import SentencePieceTokenizer
from lmhpc.model.args import MoEArgs
from tests.exchange.conftest import MIXED_TEXT, tiny_weights, token_batch
from tests.helpers import import_peer


def transformers() -> ModuleType:
    return import_peer("transformers")


def transformers_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of transformers' reading of a GGUF file (it dequantises and un-permutes Q/K itself)."""
    model = transformers().AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens).logits


def gguf_fields(path: Path) -> dict:
    import gguf

    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()}


@pytest.mark.parametrize("variant", ["dense", "tied", "mup", "moe"])
def test_f32_file_reproduces_our_logits(tmp_path: Path, sp_tokenizer: Path, variant: str) -> None:
    options = {"dense": {}, "tied": {"tie_embeddings": True}, "mup": {"mup_base_dim": 32, "tie_embeddings": True},
               "moe": {"moe": MoEArgs(num_experts=4, top_k=2, capacity_factor=0.0)}}[variant]
    model, weights = tiny_weights(sp_tokenizer, **options)
    path = write_gguf(weights, tmp_path / "model.gguf", "f32")
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        ours = model(x)
        back = build_model(read_weights(path)).eval()(x)
    assert (ours - back).abs().max().item() <= 1e-3
    if variant != "moe":  # transformers reads llama-architecture experts as dense layers
        assert (ours - transformers_logits(path, x)).abs().max().item() <= 1e-3


def test_the_parity_test_sees_a_wrong_rope_layout(tmp_path: Path, sp_tokenizer: Path) -> None:
    """Q/K written in Hugging Face's half-split layout (what a converter that forgot llama.cpp's layout would
    write): the logits no longer match."""
    model, weights = tiny_weights(sp_tokenizer)
    for name in list(weights.state):
        if name.endswith(("wq.weight", "wk.weight")):
            heads = model.args.n_heads if name.endswith("wq.weight") else model.args.kv_heads
            weights.state[name] = to_hf_rotary(weights.state[name], heads)
    path = write_gguf(weights, tmp_path / "wrong.gguf", "f32")
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        assert (model(x) - transformers_logits(path, x)).abs().max().item() > 0.1


def test_f16_and_q8_0(tmp_path: Path, sp_tokenizer: Path) -> None:
    import gguf

    model, weights = tiny_weights(sp_tokenizer)
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        ours = model(x)
    for qtype, tolerance in (("f16", 5e-3), ("q8_0", 0.1)):
        path = write_gguf(weights, tmp_path / f"model-{qtype}.gguf", qtype)
        types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32  # norms stay F32
        expected = gguf.GGMLQuantizationType.F16 if qtype == "f16" else gguf.GGMLQuantizationType.Q8_0
        assert types["blk.0.attn_q.weight"] == expected and types["token_embd.weight"] == expected
        with torch.no_grad():
            back = build_model(read_weights(path)).eval()(x)
        assert (ours - back).abs().max().item() <= tolerance
        # our dequantisation and transformers' agree on the very same file
        assert (back - transformers_logits(path, x)).abs().max().item() <= 1e-4


def trained_tiny_model(steps: int = 150) -> torch.nn.Module:
    """A tiny model trained to follow a fixed random successor of every token: confident, like a trained model
    (a random model's logits are nearly flat, and any rounding flips their argmax)."""
    from tests.exchange.conftest import tiny_model

    model = tiny_model(800, qk_scale=1.0).train()
    g = torch.Generator().manual_seed(0)
    successor = torch.randperm(800, generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def chains(n: int = 8, length: int = 32) -> torch.Tensor:
        rows = [torch.randint(0, 800, (n,), generator=g)]
        for _ in range(length - 1):
            rows.append(successor[rows[-1]])
        return torch.stack(rows, 1)

    for _ in range(steps):
        x = chains()
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.chains = chains
    return model


def test_q8_0_keeps_a_trained_models_greedy_choices(tmp_path: Path, sp_tokenizer: Path) -> None:
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    model = trained_tiny_model()
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer))
    path = write_gguf(weights, tmp_path / "model.gguf", "q8_0")
    x = model.chains(16, 32)
    with torch.no_grad():
        ours, back = model(x), build_model(read_weights(path)).eval()(x)
    assert (ours.argmax(-1) == back.argmax(-1)).float().mean().item() >= 0.99


def test_sentencepiece_vocabulary_in_the_file(tmp_path: Path, sp_tokenizer: Path) -> None:
    model, weights = tiny_weights(sp_tokenizer)
    path = write_gguf(weights, tmp_path / "model.gguf", "f16")
    fields = gguf_fields(path)
    sp = SentencePieceTokenizer(sp_tokenizer / "tokenizer.model")
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert fields["tokenizer.ggml.model"] == "llama" and fields["general.architecture"] == "llama"
    assert len(tokens) == model.args.vocab_size > sp.vocab_size  # one token per embedding row
    assert types[sp.vocab_size:] == [UNUSED] * (model.args.vocab_size - sp.vocab_size)
    assert types[sp.token_id("<|im_start|>")] == USER_DEFINED and types[sp.eos_id] == CONTROL
    assert types[sp.token_id("<0x41>")] == BYTE and types[sp.token_id("▁the")] == NORMAL
    assert fields["tokenizer.ggml.bos_token_id"] == sp.bos_id and fields["tokenizer.ggml.eos_token_id"] == sp.eos_id
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_space_prefix"] is True
    assert fields["llama.rope.dimension_count"] == 16 and fields["llama.attention.head_count_kv"] == 2

    loaded = load_model(path)  # the tokenizer rebuilt from the file tokenizes as the original
    assert loaded.tokenizer.encode(MIXED_TEXT) == sp.encode(MIXED_TEXT)
    assert loaded.tokenizer.decode(sp.encode(MIXED_TEXT)) == MIXED_TEXT
    assert loaded.tokenizer.eos_id == sp.eos_id and loaded.tokenizer.bos_id == sp.bos_id
    theirs = transformers().AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert theirs("the quick brown fox", add_special_tokens=False).input_ids == sp.encode("the quick brown fox")


def test_chat_template_travels(tmp_path: Path, sp_tokenizer: Path) -> None:
    import json

    _, weights = tiny_weights(sp_tokenizer)
    config = json.loads(weights.tokenizer_files["tokenizer_config.json"])
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    weights.tokenizer_files["tokenizer_config.json"] = json.dumps({**config, "chat_template": template}).encode()
    path = write_gguf(weights, tmp_path / "model.gguf", "f16")
    assert gguf_fields(path)["tokenizer.chat_template"] == template
    chat = load_model(path).tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"


def test_mamba_layers_are_refused(tmp_path: Path, sp_tokenizer: Path) -> None:
    _, weights = tiny_weights(sp_tokenizer, layer_pattern="AM")
    with pytest.raises(UnsupportedModel, match="Mamba"):
        write_gguf(weights, tmp_path / "model.gguf")
    assert not (tmp_path / "model.gguf").exists()


def test_q4_0_blocks_equal_ggml_and_gguf_dequantizes_ours() -> None:
    """Our Q4_0 blocks are gguf-py's (a port of ggml's reference quantizer) byte for byte, and gguf's
    dequantization of our bytes equals ours."""
    import gguf
    import numpy as np

    from lmhpc.exchange.gguf_export import q4_0_blocks, q4_0_dequantize

    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 128, generator=g) * 0.05
    w[3, :32] = 0.0  # an all-zero block: d = 0, every code 8
    w[5, 7] = -0.9  # a block whose largest magnitude is negative
    ours = q4_0_blocks(w)
    assert ours.shape == (48, 128 // 32 * 18) and ours.dtype == np.uint8
    assert np.array_equal(ours, gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0))
    theirs = torch.from_numpy(gguf.quants.dequantize(ours, gguf.GGMLQuantizationType.Q4_0))
    assert torch.equal(q4_0_dequantize(ours), theirs)
    # within a step of the block's scale; the largest magnitude of each block is exact (code 0 = -8 d)
    d = w.reshape(48, 4, 32).abs().amax(-1, keepdim=True) / 8
    assert bool(((theirs - w).reshape(48, 4, 32).abs() <= d + 1e-3 * d + 1e-8).all())


def test_q4_0_file_loads_and_scores_close_to_the_float_model(tmp_path: Path, sp_tokenizer: Path) -> None:
    import gguf

    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    model = trained_tiny_model()
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer))
    path = write_gguf(weights, tmp_path / "model-q4_0.gguf", "q4_0")
    reader = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert gguf_fields(path)["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    loaded = load_model(path)
    x = model.chains(16, 32)
    with torch.no_grad():
        ours, back = model(x), loaded.model(x)
    nll = [torch.nn.functional.cross_entropy(lg[:, :-1].flatten(0, 1), x[:, 1:].flatten()).item()
           for lg in (ours, back)]
    assert nll[1] < nll[0] + 0.25, nll
    assert (ours.argmax(-1) == back.argmax(-1)).float().mean().item() >= 0.95
