"""The grpo stage: Group Relative Policy Optimization on verifiable rewards, on the alignment training core.

Each generation batch: ``train.global_batch_size / num_generations`` prompts of the task records (a seeded
permutation per epoch, split over the ranks), ``num_generations`` completions each from the KV-cache generator
(seeded by the run's seed and the batch index), scored by the reward functions; group-normalised advantages;
old log-probs (``num_iterations`` > 1) and the starting model's log-probs (``beta`` > 0, a frozen copy) computed
once. Every optimizer step then runs the clipped objective over the batch's micro-batches (:mod:`lmhpc.rl.grpo`).

Metrics as TRL's ``GRPOTrainer`` names them: ``reward``, ``reward_std``, ``rewards/<func>/mean|std``,
``frac_reward_zero_std``, ``kl`` (``beta`` > 0), ``entropy``, ``clip_ratio/low_mean|low_min|high_mean|high_max|
region_mean``, ``completions/mean_length|min_length|max_length|clipped_ratio``, ``num_tokens`` (running total of
prompt and completion tokens). ``low_min`` and ``high_max`` are TRL's with one micro-batch per step (several:
their mean over the micro-batches).

Outputs in ``<run>/grpo/``: ``checkpoints/step-N/`` (the policy; ``lmhpc.exchange.load_model`` opens the
folder), ``tasks.jsonl`` (the prompts), ``quarantine/tasks.jsonl``, ``rollouts/`` (the current generation
batch), ``metrics.jsonl``; stats hold greedy accuracy on held-out records before and after.
"""

from __future__ import annotations

import logging
from typing import Any

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
from lmhpc.rl.config import MODEL_STAGES, GRPOConfig
from lmhpc.rl.grpo import GroupBatch, reward_metrics, score_group_batch, sequence_logps_no_grad
from lmhpc.rl.losses import clip_metrics, clipped_policy_terms, policy_loss_parts
from lmhpc.rl.rewards import load_reward_function
from lmhpc.rl.rollout import completion_logps, rollout_seed, sample

log = logging.getLogger("lmhpc.grpo")


def grpo_loss(model: nn.Module, batch: dict[str, Any], cfg: GRPOConfig) -> tuple[torch.Tensor, float, dict]:
    """One micro-batch: (loss sum, normaliser, metrics) for the alignment core (see
    :func:`lmhpc.rl.losses.policy_loss_parts`)."""
    gb: GroupBatch = batch["rows"]
    rollout = gb.rollout
    logps, entropy = completion_logps(model, rollout, cfg.sampling.temperature, entropy=True)
    device = logps.device
    mask = rollout.completion_mask.to(device)
    old = gb.old_logps.to(device) if gb.old_logps is not None else logps.detach()
    ref = gb.ref_logps.to(device) if gb.ref_logps is not None else None
    advantages = gb.advantages.to(device)
    terms = clipped_policy_terms(logps, old, advantages, cfg.epsilon, cfg.epsilon_upper, ref, cfg.beta,
                                 cfg.use_bias_correction_kl)
    loss_sum, n = policy_loss_parts(terms.per_token_loss, mask, cfg.loss_type, cfg.sampling.max_completion_length)
    tokens = float(mask.sum())
    with torch.no_grad():
        metrics: dict[str, Any] = {"entropy": (float((entropy * mask).sum()), tokens),
                                   "num_tokens": float(rollout.prompt_lens.sum() + mask.sum())}
        if terms.kl is not None:
            metrics["kl"] = (float((terms.kl * mask).sum()), tokens)
        clips = clip_metrics(terms.ratio, advantages, mask, cfg.epsilon, cfg.epsilon_upper)
        for key, value in clips.items():
            if key.endswith("_mean"):
                metrics[key] = (value * tokens, tokens)
            else:
                metrics[key] = (value, 1.0)
        for key, value in batch["generation_metrics"].items():  # once per step and rank
            metrics[key] = (value, 1.0) if batch["first"] else (0.0, 0.0)
    return loss_sum, n, metrics


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: GRPOConfig = ctx.cfg.grpo
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    sampling = cfg.sampling
    with distributed(ctx, cfg.train) as device:
        trainer = AlignTrainer(ctx, cfg.train, source, device, lora=cfg.lora)
        tok = trainer.tokenizer
        max_len = min(cfg.train.max_len, trainer.args.max_seq_len)
        if max_len <= sampling.max_completion_length:
            raise ValueError(f"grpo.sampling.max_completion_length={sampling.max_completion_length} leaves no room "
                             f"for a prompt in {max_len} tokens (train.max_len / the model's max_seq_len)")
        prompts = prepare_prompts(ctx, cfg.task, tok, max_len - sampling.max_completion_length, trainer.seed,
                                  trainer.rank)
        functions = [(r.function, load_reward_function(r.function)) for r in cfg.rewards]
        weights = [r.weight for r in cfg.rewards]
        ref = trainer.load_frozen() if cfg.beta > 0 else None
        policy = RolloutPolicy(trainer)
        group = cfg.num_generations
        rows_per_rank = cfg.train.global_batch_size // trainer.dp_size
        prompts_per_rank = rows_per_rank // group
        micro = cfg.train.micro_batch_size
        store = GenerationStore(ctx.stage_dir / ROLLOUTS_DIR, trainer.rank, persist=cfg.num_iterations > 1)
        accuracy_before = greedy_accuracy(policy.current(), tok, prompts.eval_records,
                                          sampling.max_completion_length, cfg.task.add_bos)
        log.info("grpo: %d prompts (%d quarantined), %d per rank per generation × %d completions; held-out "
                 "accuracy before: %s", len(prompts.records), sum(prompts.quarantined.values()), prompts_per_rank,
                 group, accuracy_before)

        def generation(index: int) -> tuple[GroupBatch, dict[str, float]]:
            slot = BatchSlot(index, 0, 1, prompts_per_rank, trainer.dp_rank, trainer.dp_size, trainer.seed)
            records = [prompts.records[i] for i in slot.indices(len(prompts.records))]
            prompt_ids = [encode_prompt(tok, r["prompt"], cfg.task.add_bos) for r in records]
            seed = rollout_seed(trainer.seed, index, f"grpo-rank{trainer.dp_rank}")
            with torch.no_grad(), trainer.autocast():
                rollout = sample(policy.current(), tok, prompt_ids, group, sampling.max_completion_length,
                                 sampling.temperature, sampling.top_k, sampling.top_p, seed)
            repeated = [r for r in records for _ in range(group)]
            fields = {k: [r.get(k) for r in repeated] for k in repeated[0] if k != "prompt"}
            batch = score_group_batch(rollout, [r["prompt"] for r in repeated], fields, functions, weights, group,
                                      cfg.scale_rewards)
            with trainer.autocast():
                if cfg.num_iterations > 1:
                    batch.old_logps = _eval_logps(trainer.model, batch, sampling.temperature, micro)
                if ref is not None:
                    batch.ref_logps = sequence_logps_no_grad(ref, rollout, sampling.temperature, micro)
            return batch, reward_metrics(batch, [r.function for r in cfg.rewards])

        def batch_fn(slot: BatchSlot) -> dict[str, Any]:
            index = slot.step // cfg.num_iterations
            gb, metrics = store.get(index, lambda: generation(index))
            rows = slice(slot.micro * micro, (slot.micro + 1) * micro)
            return {"rows": gb.select(rows), "generation_metrics": metrics, "first": slot.micro == 0}

        stats = trainer.fit(batch_fn, lambda model, batch: grpo_loss(model, batch, cfg), cumulative=("num_tokens",))
        accuracy_after = greedy_accuracy(policy.current(), tok, prompts.eval_records,
                                         sampling.max_completion_length, cfg.task.add_bos)
        log.info("grpo: held-out accuracy %s → %s", accuracy_before, accuracy_after)
    return {**stats, **prompts.stats(), "accuracy_before": accuracy_before, "accuracy_after": accuracy_after,
            "num_generations": group, "num_iterations": cfg.num_iterations, "loss_type": cfg.loss_type,
            "beta": cfg.beta, "reward_functions": [r.function for r in cfg.rewards]}


def _eval_logps(model: nn.Module, batch: GroupBatch, temperature: float, micro: int) -> torch.Tensor:
    """The policy's log-probs of the batch now (the "old" ones of later iterations), in eval mode."""
    was = model.training
    model.eval()
    try:
        return sequence_logps_no_grad(model, batch.rollout, temperature, micro)
    finally:
        model.train(was)
