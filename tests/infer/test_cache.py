"""The KV-cache forward against the plain forward: logits at every step, greedy tokens, left padding."""

from __future__ import annotations

import pytest
import torch

from lmhpc.infer.generate import Generator
from lmhpc.infer.routing import no_token_dropping
from lmhpc.model.args import MoEArgs
from lmhpc.model.cache import InferenceCache
from tests.infer.models import VOCAB, build, tiny_args

# capacity_factor 0.5 drops tokens in a plain forward: inference must not
CONFIGS = {
    "mha": {},
    "gqa": {"n_kv_heads": 2},
    "mqa_tied": {"n_kv_heads": 1, "tie_embeddings": True},
    "mamba_hybrid": {"layer_pattern": "MA"},
    "moe_topk": {"moe": MoEArgs(num_experts=4, top_k=2, capacity_factor=0.5)},
    "moe_hash": {"moe": MoEArgs(num_experts=4, router="hash", capacity_factor=0.5)},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_logits_equal_full_forward_at_every_step(name):
    model = build(tiny_args(**CONFIGS[name]))
    prompt = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    cache = InferenceCache(model.args, 2, 7 + 12)
    seq = prompt
    with torch.inference_mode(), no_token_dropping(model):
        step_logits = model(prompt, cache=cache)
        assert torch.allclose(step_logits, model(prompt), atol=1e-5, rtol=0)
        for _ in range(12):
            nxt = step_logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            step_logits = model(nxt, cache=cache)
            full = model(seq)[:, -1:]
            assert (step_logits - full).abs().max() <= 1e-5
    assert cache.length == seq.shape[1]


@pytest.mark.parametrize("name", ["gqa", "mamba_hybrid", "moe_topk"])
def test_generator_greedy_equals_recomputing_the_prefix(name, sp_tokenizer):
    model = build(tiny_args(**CONFIGS[name]))
    prompt = [5, 17, 42, 9, 33]
    expected = list(prompt)
    with torch.inference_mode(), no_token_dropping(model):
        while len(expected) < len(prompt) + 20 and expected[-1] != sp_tokenizer.eos_id:
            expected.append(int(model(torch.tensor([expected]))[0, -1].argmax()))
    [c] = Generator(model, sp_tokenizer).generate([prompt], max_new_tokens=20)
    assert c.token_ids == expected[len(prompt):]
    assert c.finish_reason == ("eos" if expected[-1] == sp_tokenizer.eos_id else "length")


@pytest.mark.parametrize("name", ["mha", "gqa", "mamba_hybrid", "moe_topk", "moe_hash"])
def test_left_padded_batch_equals_each_prompt_alone(name, sp_tokenizer):
    model = build(tiny_args(**CONFIGS[name]))
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 2, 5, 1)]
    gen = Generator(model, sp_tokenizer)
    batch = gen.generate(prompts, max_new_tokens=16, logprobs=True)
    for prompt, together in zip(prompts, batch):
        [alone] = gen.generate([prompt], max_new_tokens=16, logprobs=True)
        assert together.token_ids == alone.token_ids
        assert together.prompt_ids == prompt
        assert max(abs(a - b) for a, b in zip(together.logprobs, alone.logprobs)) <= 1e-5


@pytest.mark.parametrize("pattern,pad_slots", [("AMA", range(0, 4)), ("A", range(0, 4)), ("A", range(3, 7))],
                         ids=["hybrid-left", "attention-left", "attention-middle"])
def test_padding_never_reaches_real_tokens(pattern, pad_slots):
    """Whatever the padding slots hold, a row's logits are those of its real tokens alone."""
    model = build(tiny_args(n_kv_heads=2, layer_pattern=pattern, n_layers=3))
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, list(pad_slots)] = False
    outs = []
    with torch.inference_mode():
        for fill in (0, 7):
            padded = tokens.clone()
            padded[0, list(pad_slots)] = fill
            cache = InferenceCache(model.args, 1, 12)
            first = model(padded, cache=cache, token_mask=mask)[:, mask[0]]
            nxt = model(torch.tensor([[11]]), cache=cache)
            outs.append(torch.cat([first, nxt], dim=1))
        alone = model(torch.cat([tokens[:, mask[0]], torch.tensor([[11]])], dim=1))
    assert torch.allclose(outs[0], outs[1], atol=1e-6, rtol=0)
    assert torch.allclose(outs[0], alone, atol=1e-5, rtol=0)


def test_mamba_refuses_padding_after_real_tokens():
    model = build(tiny_args(layer_pattern="MA"))
    mask = torch.tensor([[True, False, True]])
    with torch.inference_mode(), pytest.raises(ValueError, match="left padding only"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=InferenceCache(model.args, 1, 4), token_mask=mask)


def test_cache_positions_and_limits():
    args = tiny_args(max_seq_len=8)
    model = build(args)
    cache = InferenceCache(args, 2, 10)
    mask = torch.tensor([[True, True, True], [False, True, True]])
    with torch.inference_mode():
        positions = cache.begin(3, mask)
    assert positions.tolist() == [[0, 1, 2], [0, 0, 1]]
    assert cache.next_position.tolist() == [3, 2]
    with torch.inference_mode(), pytest.raises(ValueError, match="slots"):
        model(torch.zeros(1, 11, dtype=torch.long), cache=InferenceCache(args, 1, 10))
    with torch.inference_mode(), pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=InferenceCache(args, 1, 10))
    with pytest.raises(ValueError, match="token_mask needs a cache"):
        model(torch.zeros(1, 3, dtype=torch.long), token_mask=torch.ones(1, 3, dtype=torch.bool))


def test_no_token_dropping_lifts_the_capacity_and_keeps_the_statistics():
    model = build(tiny_args(**CONFIGS["moe_topk"]))
    moe = model.layers["0"].moe
    tokens = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model(tokens)
    assert float(moe.dropped_tokens) > 0  # training routing drops at capacity_factor 0.5
    before = {k: getattr(moe, k).clone() for k in ("tokens_per_expert", "dropped_tokens", "aux_losses")}
    with torch.no_grad(), no_token_dropping(model):
        dropped = float(moe.dropped_tokens)
        model(tokens)
        assert float(moe.dropped_tokens) == dropped
        assert moe.args.capacity_factor == 0.0
    assert moe.args.capacity_factor == 0.5
    for k, v in before.items():
        assert torch.equal(getattr(moe, k), v), k
