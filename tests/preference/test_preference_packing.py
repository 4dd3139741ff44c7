"""Packed pairs (prompt once, no padding, shared-prompt attention) score exactly as padded [chosen; rejected] rows."""

from __future__ import annotations

import torch

from lmhpc.preference.data import collate_pairs
from lmhpc.preference.logps import batch_scores, packed_scores
from lmhpc.preference.packing import pack_pairs, use_shared_prompt_attention
from tests.preference.conftest import tiny_model


def test_packed_scores_equal_padded_rows(pairs):
    model = tiny_model(400, seed=2)
    with torch.no_grad():  # sharp attention: a token seeing what it must not would show
        for layer in model.layers.values():
            layer.attention.wq.weight.mul_(8)
            layer.attention.wk.weight.mul_(8)
    chosen = pairs.pairs[:5]
    padded = batch_scores(model, collate_pairs(chosen, pad_id=0))
    use_shared_prompt_attention(model)
    packed = packed_scores(model, pack_pairs(chosen))
    assert torch.equal(packed.tokens, padded.tokens)
    for field in ("logps", "logit_sum", "entropy_sum", "top1"):
        assert torch.allclose(getattr(packed, field), getattr(padded, field), rtol=1e-5, atol=1e-4), field
    # gradients too
    logps = packed_scores(model, pack_pairs(chosen), stats=False).logps
    logps.sum().backward()
    assert model.layers["0"].attention.wq.weight.grad.abs().sum() > 0


def test_rejected_tokens_do_not_see_the_chosen_response(pairs):
    model = tiny_model(400, seed=2)
    use_shared_prompt_attention(model)
    p = pairs.pairs[0]
    other = type(p)(p.index, p.origin, p.prompt_ids, tuple(reversed(p.chosen_ids)) + (5, 6), p.rejected_ids)
    a, b = packed_scores(model, pack_pairs([p])), packed_scores(model, pack_pairs([other]))
    assert torch.equal(a.logps[1], b.logps[1])  # the rejected response's score ignores the chosen one
    assert not torch.equal(a.logps[0], b.logps[0])
