"""Preference losses and their metrics: the DPO family and the Bradley-Terry reward model.

Formulas and metric names follow TRL 1.16 (``DPOTrainer._compute_loss``, ``RewardTrainer.compute_loss``) so that
dashboards carry over. Everything here works on per-sequence tensors; the batch layout does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass
class SequenceScores:
    """Per-sequence quantities of a batch of chosen and rejected responses (shape (B,) each).

    ``logps``: summed log-probs of the response tokens; ``tokens``: their number; ``logit_sum``: the sum over
    the response tokens of the mean logit over the vocabulary; ``entropy_sum``: summed entropy of the
    next-token distributions; ``top1``: how many response tokens are the model's argmax."""

    logps: torch.Tensor
    tokens: torch.Tensor
    logit_sum: torch.Tensor | None = None
    entropy_sum: torch.Tensor | None = None
    top1: torch.Tensor | None = None


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, *, loss_type: str = "sigmoid", beta: float = 0.1,
               label_smoothing: float = 0.0, length_normalize: bool = False,
               chosen_tokens: torch.Tensor | None = None, rejected_tokens: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards ``β·(log π - log π_ref)`` of chosen and rejected (all (B,)).

    - ``sigmoid``: ``-log σ(β d)`` with ``d`` the chosen log-ratio minus the rejected one;
    - ``hinge``: ``relu(1 - β d)``;
    - ``ipo``: ``(d_avg - 1/(2β))²`` where the log-ratios are averaged per response token (as TRL does, which the
      IPO authors confirmed is the paper's form);
    - ``robust``: ``[-(1-ε) log σ(β d) + ε log σ(-β d)] / (1 - 2ε)`` with ``ε = label_smoothing``.

    ``length_normalize``: every loss on per-token averaged log-ratios (IPO always is); needs the token counts.
    The rewards in the metrics stay the summed ones, as TRL logs them.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {loss_type!r}; one of {DPO_LOSSES}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if length_normalize or loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("per-token averaged losses need the response token counts")
        delta = (chosen_ratio / chosen_tokens.clamp(min=1).to(chosen_ratio.dtype)
                 - rejected_ratio / rejected_tokens.clamp(min=1).to(rejected_ratio.dtype))
    else:
        delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1 / (2 * beta)) ** 2
    else:
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def dpo_metric_sums(chosen: SequenceScores, rejected: SequenceScores, chosen_rewards: torch.Tensor,
                    rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over a micro-batch of everything the DPO metrics average (0-dim float64 tensors, so that sums of
    micro-batches and ranks reduce exactly as one batch would): per-pair sums and per-token sums."""
    f = torch.float64
    out = {
        "pairs": torch.tensor(float(chosen.logps.numel()), dtype=f),
        "rewards/chosen": chosen_rewards.to(f).sum(),
        "rewards/rejected": rejected_rewards.to(f).sum(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(f).sum(),
        "rewards/margins": (chosen_rewards - rejected_rewards).to(f).sum(),
        "logps/chosen": chosen.logps.detach().to(f).sum(),
        "logps/rejected": rejected.logps.detach().to(f).sum(),
        "tokens/chosen": chosen.tokens.to(f).sum(),
        "tokens/rejected": rejected.tokens.to(f).sum(),
    }
    if chosen.logit_sum is not None and rejected.logit_sum is not None:
        out["logits/chosen"] = chosen.logit_sum.detach().to(f).sum()
        out["logits/rejected"] = rejected.logit_sum.detach().to(f).sum()
    if chosen.entropy_sum is not None and rejected.entropy_sum is not None:
        out["entropy"] = (chosen.entropy_sum.detach().to(f).sum() + rejected.entropy_sum.detach().to(f).sum())
    if chosen.top1 is not None:
        out["top1/chosen"] = chosen.top1.to(f).sum()
    return out


def dpo_metrics(sums: dict[str, float]) -> dict[str, float]:
    """TRL 1.16's DPO metrics from summed quantities (:func:`dpo_metric_sums`, added over micro-batches/ranks):
    rewards and log-probs per pair, logits and entropy per response token, ``mean_token_accuracy`` over the
    chosen response tokens."""
    pairs = sums["pairs"]
    out = {k: sums[k] / pairs for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                                        "rewards/margins", "logps/chosen", "logps/rejected")}
    tc, tr = sums["tokens/chosen"], sums["tokens/rejected"]
    if "logits/chosen" in sums:
        out["logits/chosen"] = sums["logits/chosen"] / tc if tc else 0.0
        out["logits/rejected"] = sums["logits/rejected"] / tr if tr else 0.0
    if "entropy" in sums:
        out["entropy"] = sums["entropy"] / (tc + tr) if tc + tr else 0.0
    if "top1/chosen" in sums:
        out["mean_token_accuracy"] = sums["top1/chosen"] / tc if tc else 0.0
    return out


def reward_losses(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, margin: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Bradley-Terry: ``-log σ(r_c - r_r [- margin])`` per pair."""
    diff = rewards_chosen - rewards_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def center_penalty(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> torch.Tensor:
    """Per pair ``(r_c + r_r)²``; TRL adds ``center_rewards_coefficient ×`` its batch mean to the loss."""
    return (rewards_chosen + rewards_rejected) ** 2


def reward_metric_values(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor) -> dict[str, float]:
    """TRL's reward-model metrics of one batch: ``accuracy`` (strict ``r_c > r_r``), ``margin`` (mean
    ``r_c - r_r``), ``min_reward``, ``mean_reward``, ``max_reward`` over every scored sequence."""
    both = torch.cat([rewards_chosen, rewards_rejected]).detach().double()
    return {
        "accuracy": (rewards_chosen > rewards_rejected).double().mean().item(),
        "margin": (rewards_chosen - rewards_rejected).double().mean().item(),
        "min_reward": both.min().item(),
        "mean_reward": both.mean().item(),
        "max_reward": both.max().item(),
    }
