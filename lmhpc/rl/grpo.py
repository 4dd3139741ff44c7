"""GRPO (Shao et al. 2024) as TRL 1.16's ``GRPOTrainer`` computes it: group-scored completions, group-normalised
advantages, the clipped objective with an optional k3 KL to the reference, and TRL's metric names.

    batch = score_group_batch(rollout, prompts, fields, rewards, weights, group_size, "group")
    loss, metrics = grpo_micro_loss(policy, batch, settings, generation_tokens, accumulation_steps)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmhpc.rl.losses import (
    LossType,
    ScaleRewards,
    clip_metrics,
    clipped_policy_terms,
    group_advantages,
    masked_mean,
    nanstd,
    reduce_policy_loss,
)
from lmhpc.rl.rewards import RewardFunction, function_name, score
from lmhpc.rl.rollout import Rollout, completion_logps


@dataclass(frozen=True)
class GRPOSettings:
    """The loss's knobs (names as TRL's ``GRPOConfig``)."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    loss_type: LossType = "dapo"
    max_completion_length: int = 64
    temperature: float = 1.0
    kl_bias_correction: bool = True  # TRL's use_bias_correction_kl


@dataclass
class GroupBatch:
    """A scored generation batch: the rollout, each function's rewards (B, F), the weighted rewards (B,),
    the advantages (B,), and once computed the old and reference per-token log-probs (B, C)."""

    rollout: Rollout
    rewards_per_func: torch.Tensor
    rewards: torch.Tensor
    advantages: torch.Tensor
    std: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None

    def select(self, rows: torch.Tensor | slice) -> GroupBatch:
        index = torch.arange(self.rewards.size(0))[rows]
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return GroupBatch(self.rollout.select(index), self.rewards_per_func[index], self.rewards[index],
                          self.advantages[index], self.std[index], pick(self.old_logps), pick(self.ref_logps))


def weighted_rewards(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_f w_f·r_f per completion (NaN rewards count as 0; a row whose functions all returned None stays NaN)."""
    total = (rewards_per_func * weights[None, :]).nansum(dim=1)
    total[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
    return total


def score_group_batch(rollout: Rollout, prompts: Sequence[Any], fields: dict[str, list[Any]],
                      functions: Sequence[tuple[str, RewardFunction]], weights: Sequence[float], group_size: int,
                      scale_rewards: ScaleRewards) -> GroupBatch:
    """Reward every completion of ``rollout`` (row ``i`` answers ``prompts[i]``, with record ``fields[k][i]``)
    and turn the rewards into group-normalised advantages."""
    per_func = torch.tensor(score(functions, prompts, rollout.completion_texts, fields),
                            dtype=torch.float32).T.contiguous()
    w = torch.tensor(list(weights), dtype=torch.float32)
    rewards = weighted_rewards(per_func, w)
    advantages, std = group_advantages(rewards, group_size, scale_rewards)
    advantages = torch.nan_to_num(advantages, nan=0.0)  # an unscorable completion carries no signal
    return GroupBatch(rollout, per_func, rewards, advantages, std)


def reward_metrics(batch: GroupBatch, names: Sequence[str]) -> dict[str, float]:
    """``reward``, ``reward_std``, ``rewards/<func>/mean|std``, ``frac_reward_zero_std`` and the completion
    lengths, as TRL logs them."""
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        col = batch.rewards_per_func[:, i]
        out[f"rewards/{function_name(name)}/mean"] = torch.nanmean(col).item()
        out[f"rewards/{function_name(name)}/std"] = _nanstd(col)
    out["reward"] = torch.nanmean(batch.rewards).item()
    out["reward_std"] = _nanstd(batch.rewards)
    out["frac_reward_zero_std"] = torch.isclose(batch.std, torch.zeros_like(batch.std)).float().mean().item()
    lengths = batch.rollout.completion_lens.float()
    out["completions/mean_length"] = lengths.mean().item()
    out["completions/min_length"] = lengths.min().item()
    out["completions/max_length"] = lengths.max().item()
    out["completions/clipped_ratio"] = float(sum(f == "length" for f in batch.rollout.finish_reasons)
                                             ) / max(len(batch.rollout.finish_reasons), 1)
    return out


def _nanstd(x: torch.Tensor) -> float:
    return nanstd(x).item()


@torch.no_grad()
def sequence_logps_no_grad(model: torch.nn.Module, rollout: Rollout, temperature: float,
                           micro_batch: int = 0) -> torch.Tensor:
    """Per-token log-probs (B, C) of ``rollout``'s completions under ``model``, without gradients, in chunks
    of ``micro_batch`` rows (0: all at once)."""
    rows = rollout.tokens.size(0)
    size = micro_batch or rows
    parts = [completion_logps(model, rollout.select(slice(i, i + size)), temperature)[0].cpu()
             for i in range(0, rows, size)]
    width = rollout.completion_ids.size(1)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.size(1))) for p in parts])


def grpo_micro_loss(model: torch.nn.Module, batch: GroupBatch, settings: GRPOSettings,
                    generation_tokens: float, accumulation_steps: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The loss of one micro-batch of a GRPO step (normalised so the micro-batches of a step sum to the step's
    loss) and its per-token statistics: sums and counts the caller adds up over the step."""
    logps, entropy = completion_logps(model, batch.rollout, settings.temperature, entropy=True)
    device = logps.device
    mask = batch.rollout.completion_mask.to(device)
    old = batch.old_logps.to(device) if batch.old_logps is not None else logps.detach()
    ref = batch.ref_logps.to(device) if batch.ref_logps is not None else None
    advantages = batch.advantages.to(device)
    terms = clipped_policy_terms(logps, old, advantages, settings.epsilon_low, settings.epsilon_high, ref,
                                 settings.beta, settings.kl_bias_correction)
    loss = reduce_policy_loss(terms.per_token_loss, mask, settings.loss_type, settings.max_completion_length,
                              accumulation_steps, generation_tokens)
    stats: dict[str, Any] = {
        "tokens": mask.sum().item(),
        "entropy_sum": (entropy * mask).sum().item(),
        "clip": clip_metrics(terms.ratio.detach(), advantages, mask, settings.epsilon_low, settings.epsilon_high),
    }
    if terms.kl is not None:
        stats["kl_sum"] = (terms.kl.detach() * mask).sum().item()
        stats["kl_mean"] = masked_mean(terms.kl.detach(), mask).item()
    return loss, stats
