"""Quantized layers in memory: QuantLinear and NF4Linear give the dequantized float model's logits while holding
about bits/32 of its weight bytes; NF4 and torchao int8 in the packed format; an NF4 base for QLoRA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.int8 import torchao_int8
from lmhpc.quantize.model import nf4_model, rtn_model
from lmhpc.quantize.nf4 import dequantize_nf4, quantize_nf4
from lmhpc.quantize.packed import bits_per_weight, load_quantized, save_quantized
from lmhpc.quantize.qlinear import NF4Linear, QuantLinear, module_bytes, nf4_base
from lmhpc.quantize.rtn import dequantize, quantize


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = {"vocab_size": 64, "dim": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 32, "init_std": 0.05,
            "embedding_init_std": 1.0}
    return Transformer(ModelArgs(**{**base, **kw})).eval()


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 64), (8, None), (4, None)])
def test_quant_linear_matches_dequantized_weight_and_is_small(bits, group):
    torch.manual_seed(1)
    w = torch.randn(96, 256) * 0.02
    q = quantize(w, bits, group, symmetric=False)
    layer = QuantLinear(q)
    x = torch.randn(5, 256)
    assert torch.equal(layer.dequantized(), dequantize(q))
    torch.testing.assert_close(layer(x), x @ dequantize(q).T, rtol=1e-5, atol=1e-6)
    assert not list(layer.parameters())
    stored_bits = 8 if bits > 4 else 4  # 3-bit codes take a nibble
    g = group or 256
    expected = 96 * 256 * stored_bits / 8 + 2 * 4 * 96 * (256 // g)
    assert module_bytes(layer) == expected
    assert module_bytes(layer) <= (stored_bits / 32 + 2 / g) * w.numel() * 4
    assert bits_per_weight({"w": q}) == pytest.approx(8 * expected / w.numel())


@pytest.mark.parametrize("method", ["rtn", "nf4"])
def test_quantized_layers_give_the_dequantized_models_logits(tmp_path, method):
    model = tiny()
    quantized = rtn_model(model, bits=4, group_size=32) if method == "rtn" else nf4_model(model)
    path = save_quantized(model, quantized, tmp_path / "m.safetensors", method)
    float_model = load_quantized(path, dequantize=True)
    packed_model = load_quantized(path, dequantize=False)
    kinds = {type(m) for m in packed_model.modules()}
    assert (QuantLinear if method == "rtn" else NF4Linear) in kinds
    assert not any(isinstance(m, nn.Linear) for n, m in packed_model.named_modules() if n.startswith("layers."))
    tokens = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(packed_model(tokens), float_model(tokens), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(float_model(tokens), model(tokens), rtol=0, atol=0)
    # the block weights take about bits/32 of float32's bytes
    block_float = sum(module_bytes(m) for n, m in float_model.named_modules() if n.startswith("layers.")
                      and isinstance(m, nn.Linear))
    block_packed = sum(module_bytes(m) for n, m in packed_model.named_modules() if n.startswith("layers.")
                       and isinstance(m, (QuantLinear, NF4Linear)))
    ratio = block_packed / block_float
    expected = (4 + 64 / 32) / 32 if method == "rtn" else (4 + 8 / 64 + 32 / (64 * 256)) / 32
    assert ratio == pytest.approx(expected, rel=0.02), ratio
    assert module_bytes(packed_model) < 0.6 * module_bytes(float_model)


def test_nf4_linear_equals_dequantize_nf4_and_trains_lora_only():
    torch.manual_seed(2)
    linear = nn.Linear(192, 80, bias=False)
    layer = NF4Linear.from_linear(linear)
    assert torch.equal(layer.dequantized(), dequantize_nf4(quantize_nf4(linear.weight.detach())))
    model = tiny()
    nf4_base(model)
    for p in model.parameters():
        p.requires_grad_(False)
    base = model.layers["0"].attention.wq
    assert isinstance(base, NF4Linear) and not list(base.parameters())
    # a LoRA adapter around the NF4 base: only A and B receive gradients
    a = nn.Parameter(torch.randn(4, base.in_features) * 0.01)
    b = nn.Parameter(torch.zeros(base.out_features, 4))
    x = torch.randn(3, base.in_features, requires_grad=True)
    y = base(x) + (x @ a.T) @ b.T
    y.square().sum().backward()
    assert b.grad is not None and float(b.grad.abs().sum()) > 0 and x.grad is not None


@pytest.mark.parametrize("method", ["int8", "int8_dynamic"])
def test_torchao_int8_round_trips_through_the_packed_format(tmp_path, method):
    model = tiny()
    ref = tiny()
    quantized = torchao_int8(model, method)
    q = quantized["layers.0.attention.wq.weight"]
    assert q.bits == 8 and q.scales.shape == (128, 1)
    w = ref.layers["0"].attention.wq.weight
    assert float((dequantize(q) - w.detach()).abs().max()) <= float(q.scales.max()) / 2 + 1e-7
    path = save_quantized(model, quantized, tmp_path / "m.safetensors", method)
    loaded = load_quantized(path, dequantize=False)
    assert type(loaded.layers["0"].attention.wq.weight).__name__ == "Int8Tensor"
    tokens = torch.randint(0, 64, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)
        float_logits = load_quantized(path, dequantize=True)(tokens)
        scale = float(float_logits.abs().max())
        assert float((loaded(tokens) - float_logits).abs().max()) < 0.05 * scale


@pytest.mark.parametrize("method", ["gptq", "nf4"])
def test_generator_decodes_a_packed_folder_opened_by_load_model(tmp_path, method):
    """load_model opens a packed folder with its quantized layers; greedy decoding equals the dequantized model's."""
    from lmhpc.exchange import load_model
    from lmhpc.exchange.weights import read_tokenizer_files
    from lmhpc.infer.generate import Generator
    from lmhpc.quantize.model import gptq_model
    from lmhpc.quantize.packed import save_folder
    from tests.train.fixtures import make_tokenizer

    make_tokenizer(tmp_path / "tok")
    model = tiny(vocab_size=96, max_seq_len=64)
    if method == "gptq":
        quantized = gptq_model(model, torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(0)),
                               bits=4, group_size=32)
    else:
        quantized = nf4_model(model)
    folder = save_folder(model, quantized, tmp_path / "packed", method, read_tokenizer_files(tmp_path / "tok"))
    loaded = load_model(folder)
    assert isinstance(loaded.model.layers["0"].feed_forward.w1, QuantLinear if method == "gptq" else NF4Linear)
    prompt = [5, 17, 42, 9]
    [ours] = Generator(loaded.model, loaded.tokenizer).generate([prompt], max_new_tokens=12, ignore_eos=True)
    [ref] = Generator(model, loaded.tokenizer).generate([prompt], max_new_tokens=12, ignore_eos=True)
    assert ours.token_ids == ref.token_ids and len(ours.token_ids) == 12
