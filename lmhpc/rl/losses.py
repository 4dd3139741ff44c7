"""The arithmetic of policy-gradient alignment: KL estimators, advantages (GRPO groups, GAE), clipped losses.

Shapes: per-token tensors are (B, T) over completion positions with a ``mask`` (B, T) of real completion
tokens (1) and padding (0); per-sequence tensors are (B,).

GRPO follows TRL 1.16's ``GRPOTrainer`` (advantages, k3 KL, the clipped objective and the ``grpo``, ``bnpo``,
``dr_grpo`` and ``dapo`` normalisations); PPO follows the classic RLHF recipe (Ziegler et al. 2019, Stiennon et
al. 2020, as in TRL's former ``PPOTrainer``): per-token reward ``-kl_coef * KL`` plus the score at the last token,
GAE, whitened advantages, clipped policy and value losses, and the adaptive KL controller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k2", "k3"]
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
ScaleRewards = Literal["group", "batch", "none"]


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from tokens sampled from π (Schulman, "Approximating KL divergence").

    ``k1``: ``log π − log π_ref`` (unbiased, may be negative); ``k2``: ``½ (log π − log π_ref)²``;
    ``k3``: ``exp(log π_ref − log π) − (log π_ref − log π) − 1`` (unbiased, never negative; TRL's GRPO)."""
    if estimator == "k1":
        return logps - ref_logps
    if estimator == "k2":
        return 0.5 * (logps - ref_logps) ** 2
    if estimator == "k3":
        delta = ref_logps - logps
        return torch.exp(delta) - delta - 1
    raise ValueError(f"unknown KL estimator {estimator!r}: k1, k2 or k3")


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over the masked positions (Bessel-corrected when ``unbiased``)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros_like(var)
        var = var * n / (n - 1)
    return var


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``x`` scaled to unit variance over the masked positions (and centred, with ``shift_mean``)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    return out if shift_mean else out + mean


# --- GRPO ------------------------------------------------------------------------------------------------------


def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (TRL's ``nanstd``)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = var * count / (count - 1)
    return (var.squeeze(dim) if dim is not None else var.reshape(())).sqrt()


def group_advantages(rewards: torch.Tensor, group_size: int, scale_rewards: ScaleRewards = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages of ``rewards`` (B,), whose consecutive runs of ``group_size`` answer the same prompt:
    ``r − mean_group``, divided by ``std + 1e-4`` (``group``: the group's Bessel-corrected std; ``batch``: the
    whole batch's; ``none``: not divided). NaN rewards (unscorable completions) are left out of the means and
    stds and keep a NaN advantage. Returns (advantages, the std used, per sequence): a zero std marks a
    group whose completions all scored alike (``frac_reward_zero_std``)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of the group size {group_size}, "
                         f"got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    if scale_rewards in ("group", "none"):
        std = nanstd(grouped, dim=1) if group_size > 1 else torch.zeros_like(grouped[:, 0])
        std = std.repeat_interleave(group_size)
    elif scale_rewards == "batch":
        std = (nanstd(rewards) if rewards.numel() > 1 else rewards.new_zeros(())).expand_as(rewards)
    else:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}: group, batch or none")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return advantages, std


@dataclass
class PolicyLossTerms:
    """Per-token pieces of a clipped policy loss: the loss, the ratio π/π_old, and the KL (None without one)."""

    per_token_loss: torch.Tensor
    ratio: torch.Tensor
    kl: torch.Tensor | None


def clipped_policy_terms(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                         epsilon_low: float, epsilon_high: float, ref_logps: torch.Tensor | None = None,
                         beta: float = 0.0, kl_bias_correction: bool = True) -> PolicyLossTerms:
    """``−min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A) + β·KL`` per token, with ``ρ = exp(log π − log π_old)`` and
    ``KL = k3`` (times ``ρ`` with ``kl_bias_correction``, TRL 1.16's default ``use_bias_correction_kl``: the
    KL gradient becomes the unbiased reverse-KL gradient for tokens sampled from π_old).
    ``advantages``: (B,) per sequence or (B, T) per token."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs the reference model's log-probs")
        kl = kl_estimate(logps, ref_logps, "k3")
        if kl_bias_correction:
            kl = kl * ratio
        per_token_loss = per_token_loss + beta * kl
    return PolicyLossTerms(per_token_loss, ratio, kl)


def reduce_policy_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: LossType,
                       max_completion_length: int, accumulation_steps: int = 1,
                       generation_tokens: torch.Tensor | float | None = None) -> torch.Tensor:
    """The loss of one micro-batch, normalised as TRL 1.16 does, so that summing the micro-batches of an
    optimizer step (``accumulation_steps`` of them) gives the step's loss:

    - ``grpo``: each sequence's mean over its tokens, then the mean over sequences;
    - ``bnpo``: the mean over the micro-batch's tokens;
    - ``dr_grpo``: the sum over tokens divided by (sequences × ``max_completion_length``);
    - ``dapo``: the sum over tokens divided by the active tokens of the whole generation batch
      (``generation_tokens``), so every token of the step weighs the same.
    The first three are divided by ``accumulation_steps``; ``dapo``'s normaliser already spans the step."""
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type == "dapo":
        if generation_tokens is None:
            raise ValueError("loss_type 'dapo' needs the generation batch's token count")
        total = torch.as_tensor(generation_tokens, dtype=per_token_loss.dtype, device=per_token_loss.device)
        return (per_token_loss * mask).sum() / total.clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}: grpo, bnpo, dr_grpo or dapo")
    return loss / accumulation_steps


def policy_loss_parts(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: LossType,
                      max_completion_length: int) -> tuple[torch.Tensor, float]:
    """(sum, normaliser) of one micro-batch such that Σ sums / Σ normalisers over the micro-batches (and ranks)
    of an optimizer step is :func:`reduce_policy_loss`'s step loss for equal micro-batches: ``grpo`` sums the
    sequences' token means over sequences; ``bnpo`` counts the micro-batch's token mean once; ``dr_grpo`` sums
    tokens / ``max_completion_length`` over sequences; ``dapo`` sums tokens over tokens."""
    rows = float(per_token_loss.size(0))
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum(), rows
    if loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0), 1.0
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / max_completion_length, rows
    if loss_type == "dapo":
        return (per_token_loss * mask).sum(), float(mask.sum())
    raise ValueError(f"unknown loss_type {loss_type!r}: grpo, bnpo, dr_grpo or dapo")


def clip_metrics(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, epsilon_low: float,
                 epsilon_high: float) -> dict[str, float]:
    """TRL's ``clip_ratio/*``: the share of tokens whose ratio the clip held back below (negative advantage)
    or above (positive advantage), over all tokens (``*_mean``) and per sequence (``low_min``, ``high_max``)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    low = ((ratio < 1 - epsilon_low) & (advantages < 0)).float()
    high = ((ratio > 1 + epsilon_high) & (advantages > 0)).float()
    region = torch.maximum(low, high)
    per_seq_low = (low * mask).sum(-1) / mask.sum(-1)
    per_seq_high = (high * mask).sum(-1) / mask.sum(-1)
    return {
        "clip_ratio/low_mean": masked_mean(low, mask).item(),
        "clip_ratio/low_min": _nan_reduce(per_seq_low, torch.min),
        "clip_ratio/high_mean": masked_mean(high, mask).item(),
        "clip_ratio/high_max": _nan_reduce(per_seq_high, torch.max),
        "clip_ratio/region_mean": masked_mean(region, mask).item(),
    }


def _nan_reduce(x: torch.Tensor, fn) -> float:
    kept = x[~torch.isnan(x)]
    return fn(kept).item() if kept.numel() else float("nan")


# --- PPO -------------------------------------------------------------------------------------------------------


def token_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards of PPO for RLHF: ``−kl_coef · KL`` at every completion token, plus the sequence's
    ``score`` at its last token. Returns (rewards (B, T), the KL part alone (B, T))."""
    non_score = -kl_coef * kl * mask
    rewards = non_score.clone()
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards * mask, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's completion tokens:
    ``δ_t = r_t + γ V_{t+1} − V_t`` (V = 0 after the last token), ``A_t = δ_t + γλ A_{t+1}``.
    Returns (advantages, returns = advantages + values), zero at padding."""
    values = values * mask
    rewards = rewards * mask
    steps = rewards.size(1)
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(steps)):
        next_value = values[:, t + 1] if t + 1 < steps else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def ppo_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                    cliprange: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate ``mean(max(−A·ρ, −A·clip(ρ, 1±ε)))`` over the completion tokens, with its
    clip fraction and approximate KL (½ mean (log ρ)²)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(loss1, loss2), mask)
    stats = {"clipfrac": masked_mean((loss2 > loss1).float(), mask),
             "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
             "ratio": masked_mean(ratio, mask)}
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                   cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped value loss ``½ mean(max((V − R)², (V_clip − R)²))`` with
    ``V_clip = V_old + clip(V − V_old, ±ε_v)``, and the share of tokens where the clipped term was larger."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss1 = (values - returns) ** 2
    loss2 = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(loss1, loss2), mask)
    return loss, masked_mean((loss2 > loss1).float(), mask)


class AdaptiveKLController:
    """The KL coefficient of Ziegler et al. (2019): after each batch, ``β ← β·(1 + K_β·e)`` with
    ``e = clip(KL/target − 1, −0.2, 0.2)`` and ``K_β = n_steps/horizon`` (``n_steps``: sequences in the batch),
    so the measured KL is driven toward ``target``. ``target`` None: a fixed coefficient."""

    def __init__(self, init: float, target: float | None = None, horizon: int = 10000) -> None:
        self.value = float(init)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None and math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
