"""Sampling semantics on small crafted distributions, against transformers' logits processors, and seeds."""

from __future__ import annotations

import math

import pytest
import torch

from lmhpc.infer.generate import Generator
from lmhpc.infer.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    filter_top_k,
    filter_top_p,
    next_tokens,
)
from tests.infer.models import build, tiny_args

PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().flatten().tolist()


def test_top_k_keeps_the_k_most_likely():
    assert kept(filter_top_k(LOGITS, 1)) == [0]
    assert kept(filter_top_k(LOGITS, 3)) == [0, 1, 2]
    assert kept(filter_top_k(LOGITS, 0)) == [0, 1, 2, 3]
    assert kept(filter_top_k(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), 2)) == [1, 2]


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(filter_top_p(LOGITS, 0.5)) == [0]  # 0.5 reached by the first token alone
    assert kept(filter_top_p(LOGITS, 0.6)) == [0, 1]
    assert kept(filter_top_p(LOGITS, 0.81)) == [0, 1, 2]
    assert kept(filter_top_p(LOGITS, 0.01)) == [0]  # the most likely always stays
    shuffled = LOGITS[:, [2, 0, 3, 1]]
    assert kept(filter_top_p(shuffled, 0.6)) == [1, 3]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 3.0, -0.5]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0, -0.5]]
    assert next_tokens(torch.tensor([[2.0, 1.5]]), SamplingParams(repetition_penalty=2.0),
                       torch.tensor([[True, False]])).tolist() == [1]


def test_sampled_frequencies_follow_the_filtered_distribution():
    params = SamplingParams(temperature=1.0, top_p=0.6)  # keeps tokens 0 and 1: 0.625 / 0.375
    g = torch.Generator().manual_seed(0)
    draws = next_tokens(LOGITS.expand(4000, -1), params, generator=g)
    assert set(draws.tolist()) == {0, 1}
    assert abs(float((draws == 0).float().mean()) - 0.625) < 0.03
    # temperature 2 flattens: p ∝ sqrt(PROBS)
    draws = next_tokens(LOGITS.expand(4000, -1), SamplingParams(temperature=2.0), generator=g)
    flat = PROBS.sqrt() / PROBS.sqrt().sum()
    freq = torch.bincount(draws, minlength=4).float() / 4000
    assert torch.allclose(freq, flat[0], atol=0.03)


def test_filters_match_transformers_logits_processors():
    from transformers.generation.logits_process import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 50, generator=g) * 3
    ids = torch.randint(0, 50, (8, 12), generator=g)
    seen = torch.zeros(8, 50, dtype=torch.bool).scatter(1, ids, True)
    ours = filter_top_p(filter_top_k(apply_repetition_penalty(logits, seen, 1.3) / 0.7, 10), 0.8)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    for warper in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        theirs = warper(ids, theirs)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.allclose(ours[torch.isfinite(ours)], theirs[torch.isfinite(theirs)], atol=1e-6)


def test_invalid_parameters_are_refused():
    for bad in ({"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}, {"repetition_penalty": 0.0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


def test_seeded_sampling_is_reproducible(sp_tokenizer):
    gen = Generator(build(tiny_args(n_kv_heads=2)), sp_tokenizer)
    prompts = ["the quick brown fox", "seven tired wizards quietly"]
    kw = {"max_new_tokens": 24, "temperature": 1.5, "top_k": 40, "top_p": 0.95}
    first = gen.generate(prompts, seed=7, **kw)
    again = gen.generate(prompts, seed=7, **kw)
    other = gen.generate(prompts, seed=8, **kw)
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    assert [c.text for c in first] == [c.text for c in again]
    assert [c.token_ids for c in first] != [c.token_ids for c in other]


def test_logprobs_are_the_models_log_softmax_of_the_chosen_tokens(sp_tokenizer):
    model = build(tiny_args(layer_pattern="AM"))
    [c] = Generator(model, sp_tokenizer).generate([[5, 9, 14]], max_new_tokens=10, temperature=1.0, top_k=5,
                                                    seed=3, logprobs=True)
    seq = torch.tensor([[5, 9, 14, *c.token_ids]])
    with torch.no_grad():
        expected = torch.log_softmax(model(seq)[0, 2:-1], dim=-1).gather(1, seq[0, 3:, None])[:, 0]
    assert len(c.logprobs) == len(c.token_ids)
    assert max(abs(a - b) for a, b in zip(c.logprobs, expected.tolist())) <= 1e-5
    assert all(lp <= 0 and math.isfinite(lp) for lp in c.logprobs)
