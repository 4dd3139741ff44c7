"""GAE, clipping, KL estimators, advantages and loss normalisations against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from lmhpc.rl.losses import (
    AdaptiveKLController,
    clip_metrics,
    clipped_policy_terms,
    gae,
    group_advantages,
    kl_estimate,
    policy_loss_parts,
    ppo_policy_loss,
    ppo_value_loss,
    reduce_policy_loss,
    token_rewards,
    whiten,
)


def test_gae_by_hand():
    # one row of 3 tokens, one of 2 (third position is padding)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, -1.0, 0.0]])
    values = torch.tensor([[0.2, 0.4, 0.6], [0.1, 0.3, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    gamma, lam = 0.9, 0.8
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # row 0: δ2 = 1 - 0.6 = 0.4; δ1 = 0 + 0.9*0.6 - 0.4 = 0.14; δ0 = 0 + 0.9*0.4 - 0.2 = 0.16
    a2 = 0.4
    a1 = 0.14 + gamma * lam * a2
    a0 = 0.16 + gamma * lam * a1
    # row 1: the value at the padding (9.0) must not leak: δ1 = -1 - 0.3; δ0 = 0.5 + 0.9*0.3 - 0.1
    b1 = -1.3
    b0 = 0.5 + 0.9 * 0.3 - 0.1 + gamma * lam * b1
    expected = torch.tensor([[a0, a1, a2], [b0, b1, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values * mask) * mask, atol=1e-6)


def test_gae_gamma_one_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(ret, torch.tensor([[6.0, 5.0, 3.0]]))
    assert torch.allclose(adv, torch.tensor([[5.5, 4.5, 2.5]]))


def test_token_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, non_score = token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.2, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, 0.85], [1.8, 0.0, 0.0]]))


def test_kl_estimators():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(kl_estimate(lp, ref, "k1"), torch.tensor([0.5, -1.0]))
    assert torch.allclose(kl_estimate(lp, ref, "k2"), torch.tensor([0.125, 0.5]))
    d = torch.tensor([-0.5, 1.0])
    assert torch.allclose(kl_estimate(lp, ref, "k3"), torch.exp(d) - d - 1)
    assert (kl_estimate(lp, ref, "k3") >= 0).all()
    assert kl_estimate(lp, lp, "k3").abs().max() == 0
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(lp, ref, "k4")  # type: ignore[arg-type]


def test_ppo_policy_clipping_by_hand():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 0.7 with advantages +1, -1, +1, +1
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.7]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    loss, stats = ppo_policy_loss(logps, old, adv, torch.ones(1, 4), cliprange=0.2)
    # max(-A r, -A clip(r)): -1.2 (clipped), 0.8 (clipped: -(-1)*0.8), -1.1, -0.7 (the unclipped is larger)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 1.1 - 0.7) / 4, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_ppo_value_clipping_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    loss, frac = ppo_value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped V = 0.7 → 1.69 (larger); token 1: both 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert frac.item() == pytest.approx(0.5)


def test_grpo_clipped_objective_and_metrics():
    old = torch.zeros(2, 2)
    logps = torch.log(torch.tensor([[1.3, 1.0], [0.7, 1.0]]))
    adv = torch.tensor([1.0, -1.0])
    terms = clipped_policy_terms(logps, old, adv, 0.2, 0.28)
    assert torch.allclose(terms.per_token_loss, torch.tensor([[-1.28, -1.0], [0.8, 1.0]]), atol=1e-6)
    assert terms.kl is None
    m = clip_metrics(terms.ratio, adv, torch.ones(2, 2), 0.2, 0.28)
    assert m["clip_ratio/high_mean"] == pytest.approx(0.25)
    assert m["clip_ratio/low_mean"] == pytest.approx(0.25)
    assert m["clip_ratio/region_mean"] == pytest.approx(0.5)
    assert m["clip_ratio/high_max"] == pytest.approx(0.5)
    assert m["clip_ratio/low_min"] == pytest.approx(0.0)
    ref = torch.full((2, 2), -0.1)
    with_kl = clipped_policy_terms(logps, old, adv, 0.2, 0.28, ref_logps=ref, beta=0.5, kl_bias_correction=False)
    assert torch.allclose(with_kl.per_token_loss, terms.per_token_loss + 0.5 * kl_estimate(logps, ref, "k3"))
    corrected = clipped_policy_terms(logps, old, adv, 0.2, 0.28, ref_logps=ref, beta=0.5)
    assert torch.allclose(corrected.kl, kl_estimate(logps, ref, "k3") * torch.exp(logps))


def test_group_advantages_bessel_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, std = group_advantages(rewards, 4)
    s = math.sqrt(1 / 3)  # Bessel: var = (4 * 0.25) / 3
    assert torch.allclose(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4))
    assert std[4:].abs().max() == 0
    plain, _ = group_advantages(rewards, 4, "none")
    assert torch.allclose(plain, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))
    batch, bstd = group_advantages(rewards, 4, "batch")
    assert torch.allclose(bstd, rewards.std().expand(8))
    with pytest.raises(ValueError, match="multiple"):
        group_advantages(rewards[:7], 4)


def test_loss_normalisations_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert reduce_policy_loss(loss, mask, "grpo", 8).item() == pytest.approx((2.0 + 4.0) / 2)
    assert reduce_policy_loss(loss, mask, "bnpo", 8).item() == pytest.approx(10 / 4)
    assert reduce_policy_loss(loss, mask, "dr_grpo", 8).item() == pytest.approx(10 / (2 * 8))
    assert reduce_policy_loss(loss, mask, "dapo", 8, generation_tokens=10).item() == pytest.approx(1.0)
    assert reduce_policy_loss(loss, mask, "bnpo", 8, accumulation_steps=2).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="generation"):
        reduce_policy_loss(loss, mask, "dapo", 8)


def test_whiten_and_adaptive_kl():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = whiten(x, mask)
    assert (w[:, :3]).sum().abs() < 1e-5
    assert ((w[:, :3] ** 2).sum() / 2).item() == pytest.approx(1.0, abs=1e-4)
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=1000)
    assert ctl.update(12.0, 100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped at +0.2
    assert ctl.update(5.4, 100) == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    fixed = AdaptiveKLController(0.1)
    assert fixed.update(50.0, 100) == 0.1


def test_loss_parts_over_micro_batches_give_the_step_loss():
    torch.manual_seed(0)
    loss = torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float32)
    for loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"):
        parts = [policy_loss_parts(loss[i:i + 2], mask[i:i + 2], loss_type, 5) for i in (0, 2)]
        ours = sum(p[0] for p in parts) / sum(p[1] for p in parts)
        trl = sum(reduce_policy_loss(loss[i:i + 2], mask[i:i + 2], loss_type, 5, accumulation_steps=2,
                                     generation_tokens=mask.sum()) for i in (0, 2))
        assert ours.item() == pytest.approx(trl.item(), rel=1e-6), loss_type
