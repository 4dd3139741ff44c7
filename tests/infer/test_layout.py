"""Transposed weight copies for decoding: same results, restored layers, copies renewed when weights change."""

from __future__ import annotations

import torch

from lmhpc.infer.generate import Generator
from lmhpc.infer.layout import TransposedWeights
from tests.infer.models import VOCAB, build, tiny_args


def test_linear_layers_give_the_same_outputs_and_are_restored():
    model = build(tiny_args(n_kv_heads=2, layer_pattern="AM", tie_embeddings=True))
    tokens = torch.randint(0, VOCAB, (3, 1), generator=torch.Generator().manual_seed(0))
    layout = TransposedWeights()
    with torch.inference_mode():
        plain = model(tokens)
        with layout.applied(model):
            assert "forward" in model.output.__dict__
            transposed = model(tokens)
            long = model(torch.randint(0, VOCAB, (2, 20)))  # many rows: the layers' own weights
    assert torch.allclose(plain, transposed, atol=1e-5, rtol=0)
    assert long.shape == (2, 20, VOCAB)
    assert all("forward" not in m.__dict__ for m in model.modules())
    tied = layout.copy_of(model.output.weight)
    assert tied.shape == (32, VOCAB) and tied.is_contiguous()


def test_copies_follow_weight_updates(sp_tokenizer):
    model = build(tiny_args(n_kv_heads=2))
    fast, plain = Generator(model, sp_tokenizer), Generator(model, sp_tokenizer, transpose_weights=False)
    prompts = ["the quick brown fox", "seven"]
    before = [c.token_ids for c in fast.generate(prompts, max_new_tokens=10, logprobs=True)]
    assert before == [c.token_ids for c in plain.generate(prompts, max_new_tokens=10)]
    with torch.no_grad():  # an optimizer step changes the weights in place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    after = fast.generate(prompts, max_new_tokens=10, logprobs=True)
    reference = plain.generate(prompts, max_new_tokens=10, logprobs=True)
    assert [c.token_ids for c in after] == [c.token_ids for c in reference] != before
    for a, b in zip(after, reference):
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= 1e-5


def test_only_float32_cpu_weights_are_copied():
    model = build(tiny_args()).to(torch.bfloat16)
    layout = TransposedWeights()
    with torch.inference_mode(), layout.applied(model):
        model(torch.zeros(1, 1, dtype=torch.long))
        assert all("forward" not in m.__dict__ for m in model.modules())
    assert not layout._copies
