"""The ppo stage: PPO for language models on the alignment training core.

The value head is a linear scalar head (``Linear(dim, 1)``, zeros at first) on the policy's final hidden state,
read through a forward hook on the final norm: one trunk serves policy and value (TRL's
``AutoModelForCausalLMWithValueHead`` layout); the head is one of the core's extra modules, trained and
checkpointed with the policy, and not part of the saved model (``lmhpc.exchange.load_model`` opens the policy).

Each rollout batch (``rollout_batch_size`` prompts over the ranks, one completion each from the KV-cache
generator, seeded by the run's seed and the batch index) is scored by the reward functions or the reward stage's
model; the policy's log-probs and values and the frozen starting model's log-probs give the per-token KL
(``k1``/``k3``) and rewards ``−β·KL`` (+ the score at the last token), optionally whitened; GAE gives advantages
(whitened) and returns. The batch then makes ``num_ppo_epochs × rollout_batch_size / train.global_batch_size``
optimizer steps on seeded shuffles of it (``train.steps`` counts optimizer steps). β is fixed or, with
``target_kl``, adapted after each rollout batch (Ziegler et al. 2019); it travels with the checkpoints.

Metrics as TRL's former ``PPOTrainer`` named them: ``objective/kl``, ``objective/entropy``,
``objective/non_score_reward``, ``objective/rlhf_reward``, ``objective/scores``, ``objective/kl_coef``,
``policy/approxkl_avg``, ``policy/clipfrac_avg``, ``policy/entropy_avg``, ``loss/policy_avg``,
``loss/value_avg``, ``val/clipfrac_avg``, ``val/ratio``, ``val/num_eos_tokens``; plus ``reward`` and
``rewards/<func>/mean`` of the functions, and ``num_tokens``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmhpc.align.trainer import AlignTrainer, BatchSlot, distributed
from lmhpc.context import StageContext
from lmhpc.exchange.source import model_source
from lmhpc.rl.common import (
    ROLLOUTS_DIR,
    GenerationStore,
    RolloutPolicy,
    encode_prompt,
    greedy_accuracy,
    prepare_prompts,
)
from lmhpc.rl.config import HAS_REWARD_STAGE, MODEL_STAGES, REWARD_STAGE, PPOConfig
from lmhpc.rl.grpo import weighted_rewards
from lmhpc.rl.losses import AdaptiveKLController, gae, kl_estimate, masked_mean, token_rewards, whiten
from lmhpc.rl.rewards import function_name, load_reward_function, score
from lmhpc.rl.rollout import Rollout, completion_logps, completion_positions, rollout_seed, sample

log = logging.getLogger("lmhpc.ppo")


class ValueHead(nn.Module):
    """A scalar value per position from the policy's final hidden states (B, T, dim) → (B, T)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


class HiddenStates:
    """Keeps the output of the policy's final norm from its last forward (a forward hook)."""

    def __init__(self, model: nn.Module) -> None:
        norm = getattr(model, "norm", None)
        if norm is None:
            raise ValueError("the policy has no final norm to read hidden states from")
        self.value: torch.Tensor | None = None
        norm.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.value = output

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("no hidden states: the policy did not run its final norm")
        return value


def logps_and_values(model: nn.Module, head: ValueHead, hidden: HiddenStates, rollout: Rollout, temperature: float,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One forward of the policy: per-token log-probs of the completion, the value of the state before each
    completion token (B, C), and optionally the entropies."""
    logps, ent = completion_logps(model, rollout, temperature, entropy)
    states = hidden.take()
    index = completion_positions(rollout).to(states.device)
    picked = states.gather(1, index[..., None].expand(-1, -1, states.size(-1)))
    values = head(picked) * rollout.completion_mask.to(states.device)
    return logps, values, ent


@dataclass
class RolloutBatch:
    """A scored rollout batch with everything its PPO updates need (B rows, C completion positions)."""

    rollout: Rollout
    old_logps: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    metrics: dict[str, float]
    kl_coef_after: float

    def select(self, rows: list[int]) -> RolloutBatch:
        index = torch.tensor(rows, dtype=torch.long)
        return RolloutBatch(self.rollout.select(index), self.old_logps[index], self.old_values[index],
                            self.advantages[index], self.returns[index], self.metrics, self.kl_coef_after)


def ppo_loss(model: nn.Module, batch: dict[str, Any], cfg: PPOConfig, head: ValueHead, hidden: HiddenStates
             ) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """One micro-batch: Σ over completion tokens of the clipped policy loss + ``vf_coef`` × the clipped value
    loss, normalised by the mini-batch's tokens (by the core)."""
    rb: RolloutBatch = batch["rows"]
    logps, values, entropy = logps_and_values(model, head, hidden, rb.rollout, cfg.sampling.temperature, True)
    device = logps.device
    mask = rb.rollout.completion_mask.to(device)
    adv, ret = rb.advantages.to(device), rb.returns.to(device)
    old_logps, old_values = rb.old_logps.to(device), rb.old_values.to(device)
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - cfg.cliprange, 1 + cfg.cliprange)
    pg = torch.max(pg1, pg2)
    v_clipped = old_values + torch.clamp(values - old_values, -cfg.cliprange_value, cfg.cliprange_value)
    vf1, vf2 = (values - ret) ** 2, (v_clipped - ret) ** 2
    vf = 0.5 * torch.max(vf1, vf2)
    loss_sum = ((pg + cfg.vf_coef * vf) * mask).sum()
    n = float(mask.sum())
    with torch.no_grad():
        total = lambda x: (float((x * mask).sum()), n)  # noqa: E731
        metrics: dict[str, Any] = {
            "loss/policy_avg": total(pg), "loss/value_avg": total(vf),
            "policy/clipfrac_avg": total((pg2 > pg1).float()), "val/clipfrac_avg": total((vf2 > vf1).float()),
            "policy/approxkl_avg": total(0.5 * log_ratio ** 2), "policy/entropy_avg": total(entropy),
            "val/ratio": total(ratio),
            "num_tokens": float(rb.rollout.prompt_lens.sum() + mask.sum()),
        }
        for key, value in rb.metrics.items():  # once per step and rank
            metrics[key] = (value, 1.0) if batch["first"] else (0.0, 0.0)
    return loss_sum, n, metrics


def _reward_model(ctx: StageContext, cfg: PPOConfig, device: torch.device):
    """The reward stage's model (``ppo.reward_model`` or the run's reward stage), or None."""
    if cfg.reward_model:
        path = ctx.cfg.path(cfg.reward_model)
    elif HAS_REWARD_STAGE and REWARD_STAGE in ctx.inputs:
        path = ctx.stage_output(REWARD_STAGE)
    else:
        return None
    from lmhpc.preference.reward_model import load_reward_model

    return load_reward_model(path).to(device)


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: PPOConfig = ctx.cfg.ppo
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    sampling = cfg.sampling
    with distributed(ctx, cfg.train) as device:
        # the head's shape comes from the starting model's; the core loads the weights
        from lmhpc.exchange.load import read_weights

        dim = read_weights(source).args.dim
        head = ValueHead(dim)
        trainer = AlignTrainer(ctx, cfg.train, source, device, lora=cfg.lora, extra_modules={"value_head": head})
        head = trainer.extras["value_head"]
        hidden = HiddenStates(trainer.model)
        tok = trainer.tokenizer
        max_len = min(cfg.train.max_len, trainer.args.max_seq_len)
        if max_len <= sampling.max_completion_length:
            raise ValueError(f"ppo.sampling.max_completion_length={sampling.max_completion_length} leaves no room "
                             f"for a prompt in {max_len} tokens (train.max_len / the model's max_seq_len)")
        prompts = prepare_prompts(ctx, cfg.task, tok, max_len - sampling.max_completion_length, trainer.seed,
                                  trainer.rank)
        reward_model = _reward_model(ctx, cfg, device)
        functions = [(r.function, load_reward_function(r.function)) for r in cfg.rewards]
        weights = torch.tensor([r.weight for r in cfg.rewards], dtype=torch.float32)
        ref = trainer.load_frozen()
        policy = RolloutPolicy(trainer)
        kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl or None, cfg.kl_horizon)
        rows_per_rank = cfg.rollout_batch_size // trainer.dp_size
        mini_per_rank = cfg.train.global_batch_size // trainer.dp_size
        minibatches = rows_per_rank // mini_per_rank
        updates = cfg.updates_per_rollout()
        micro = cfg.train.micro_batch_size
        store = GenerationStore(ctx.stage_dir / ROLLOUTS_DIR, trainer.rank, persist=updates > 1)
        accuracy_before = greedy_accuracy(policy.current(), tok, prompts.eval_records,
                                          sampling.max_completion_length, cfg.task.add_bos)
        log.info("ppo: %d prompts (%d quarantined), rollout batch %d per rank, %d updates per batch; score: %s; "
                 "held-out accuracy before: %s", len(prompts.records), sum(prompts.quarantined.values()),
                 rows_per_rank, updates, "reward model" if reward_model is not None else "reward functions",
                 accuracy_before)

        def generation(index: int) -> RolloutBatch:
            slot = BatchSlot(index, 0, 1, rows_per_rank, trainer.dp_rank, trainer.dp_size, trainer.seed)
            records = [prompts.records[i] for i in slot.indices(len(prompts.records))]
            prompt_ids = [encode_prompt(tok, r["prompt"], cfg.task.add_bos) for r in records]
            seed = rollout_seed(trainer.seed, index, f"ppo-rank{trainer.dp_rank}")
            was = trainer.model.training
            with torch.no_grad(), trainer.autocast():
                rollout = sample(policy.current(), tok, prompt_ids, 1, sampling.max_completion_length,
                                 sampling.temperature, sampling.top_k, sampling.top_p, seed)
                trainer.model.eval()
                try:
                    old_logps, old_values, _ = logps_and_values(trainer.model, head, hidden, rollout,
                                                                sampling.temperature)
                finally:
                    trainer.model.train(was)
                ref_logps, _ = completion_logps(ref, rollout, sampling.temperature)
            metrics: dict[str, float] = {}
            if reward_model is not None:
                lengths = rollout.prompt_lens + rollout.completion_lens
                scores = reward_model.score(rollout.tokens.to(device), lengths.to(device)).float().cpu()
            else:
                fields = {k: [r.get(k) for r in records] for k in records[0] if k != "prompt"}
                per_func = torch.tensor(score(functions, [r["prompt"] for r in records], rollout.completion_texts,
                                              fields), dtype=torch.float32).T
                scores = torch.nan_to_num(weighted_rewards(per_func, weights))
                for i, r in enumerate(cfg.rewards):
                    metrics[f"rewards/{function_name(r.function)}/mean"] = torch.nanmean(per_func[:, i]).item()
                metrics["reward"] = scores.mean().item()
            if cfg.missing_eos_penalty:
                ended = torch.tensor([f == "eos" for f in rollout.finish_reasons])
                scores = scores - cfg.missing_eos_penalty * (~ended).float()
            mask = rollout.completion_mask
            old_logps, old_values, ref_logps = old_logps.cpu(), old_values.cpu().float(), ref_logps.cpu()
            kl = kl_estimate(old_logps, ref_logps, cfg.kl_estimator) * mask
            beta = kl_ctl.value
            rewards, non_score = token_rewards(scores, kl, mask, beta)
            if cfg.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False) * mask
            advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask) * mask
            seq_kl = kl.sum(-1)
            metrics.update({
                "objective/kl": seq_kl.mean().item(),
                "objective/entropy": (-old_logps * mask).sum(-1).mean().item(),
                "objective/non_score_reward": non_score.sum(-1).mean().item(),
                "objective/rlhf_reward": (scores + non_score.sum(-1)).mean().item(),
                "objective/scores": scores.mean().item(),
                "objective/kl_coef": beta,
                "val/num_eos_tokens": float(sum(f == "eos" for f in rollout.finish_reasons)),
                "completions/mean_length": rollout.completion_lens.float().mean().item(),
                "values/mean": masked_mean(old_values, mask).item(),
            })
            kl_after = kl_ctl.update(seq_kl.mean().item(), cfg.rollout_batch_size)
            return RolloutBatch(rollout, old_logps, old_values, advantages, returns, metrics, kl_after)

        def batch_fn(slot: BatchSlot) -> dict[str, Any]:
            index, update = divmod(slot.step, updates)
            rb = store.get(index, lambda: generation(index))
            kl_ctl.value = rb.kl_coef_after  # as after this batch's update, also when it was loaded
            epoch, mini = divmod(update, minibatches)
            order = np.random.default_rng([trainer.seed, index, epoch, trainer.dp_rank]).permutation(rows_per_rank)
            rows = order[mini * mini_per_rank:(mini + 1) * mini_per_rank][slot.micro * micro:(slot.micro + 1) * micro]
            return {"rows": rb.select([int(i) for i in rows]), "first": slot.micro == 0}

        stats = trainer.fit(batch_fn, lambda model, batch: ppo_loss(model, batch, cfg, head, hidden),
                            cumulative=("num_tokens",), state=lambda: {"kl_coef": kl_ctl.value},
                            restore=lambda s: setattr(kl_ctl, "value", float(s.get("kl_coef", cfg.kl_coef))))
        accuracy_after = greedy_accuracy(policy.current(), tok, prompts.eval_records,
                                         sampling.max_completion_length, cfg.task.add_bos)
        log.info("ppo: held-out accuracy %s → %s; KL coefficient %.4g", accuracy_before, accuracy_after,
                 kl_ctl.value)
    return {**stats, **prompts.stats(), "accuracy_before": accuracy_before, "accuracy_after": accuracy_after,
            "kl_coef_final": kl_ctl.value, "value_head": "linear scalar head on the policy trunk (shared)",
            "score": "reward model" if reward_model is not None else [r.function for r in cfg.rewards],
            "updates_per_rollout": updates}
