"""The reward stage: a Bradley-Terry reward model trained on preference pairs with the alignment core.

The policy's architecture is the backbone (its weights from the starting model; its output layer is left unused)
and ``score_head = Linear(dim, 1, bias=False)`` reads the final-norm hidden state of each row's last real token
(the end token of the response): TRL's ``RewardTrainer`` on a ``LlamaForSequenceClassification``. The head is an
extra module of the core (trained, checkpointed, whole on every rank). Loss per pair
``-log σ(r_c - r_r [- margin])`` (+ ``center_rewards_coefficient × (r_c + r_r)²``), averaged over the global batch.
Metrics as TRL names them: ``accuracy``, ``margin``, ``min_reward``, ``mean_reward``, ``max_reward``, ``num_tokens``.

Outputs in ``<run>/reward/``: ``reward_model/`` (:func:`lmhpc.preference.reward_model.load_reward_model` opens it,
or this folder), ``checkpoints/step-N/``, ``tokenizer/``, ``metrics.jsonl``, ``quarantine/pairs.jsonl``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lmhpc.align.trainer import AlignCheckpoints, AlignTrainer, BatchSlot, distributed
from lmhpc.context import StageContext
from lmhpc.exchange.load import build_model, read_weights
from lmhpc.exchange.source import model_source
from lmhpc.preference.common import preference_files, read_preference_data
from lmhpc.preference.config import MODEL_STAGES, RewardConfig
from lmhpc.preference.data import collate_pairs, pad_id_of
from lmhpc.preference.losses import center_penalty, reward_losses
from lmhpc.preference.reward_model import FOLDER, RewardModel, save_reward_model
from lmhpc.train.optim import build_optimizer

log = logging.getLogger("lmhpc.reward")


class RewardTrainer(AlignTrainer):
    """The core, adapted to a model read through its hidden states:

    - the output layer (unused: no gradient ever reaches it) is frozen and left out of the optimizer, so that its
      state has the same entries in every checkpoint (a parameter that never had a gradient has none);
    - min/max metrics: ``note(name, value)`` during ``loss_fn``; the step reports the minimum (names starting
      ``min_``) or the maximum over its micro-batches and ranks (the core sums or divides metrics)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._extrema: dict[str, float] = {}
        output = self.model.output
        if output is not None and not self.args.tie_embeddings:
            for param in output.parameters():
                param.requires_grad_(False)
            self.policy_params = [p for p in self.model.parameters() if p.requires_grad]
            self.policy_opt = build_optimizer(self.model, self.args, self.opt_cfg) if self.policy_params else None
            self.optimizers = [o for o in (self.policy_opt, self.extras_opt) if o is not None]
            self.checkpoints = AlignCheckpoints(self.ctx.stage_dir / "checkpoints", self.model, self.policy_opt,
                                                self.extras, self.extras_opt, self.lora, self.cfg.keep_last)

    def note(self, name: str, value: float) -> None:
        sign = -1.0 if name.startswith("min_") else 1.0
        self._extrema[name] = max(self._extrema.get(name, float("-inf")), sign * value)

    def _step(self, step, batch_fn, loss_fn):  # noqa: ANN001, ANN202 - the core's signature
        self._extrema = {}
        result = super()._step(step, batch_fn, loss_fn)
        names = sorted(self._extrema)
        values = torch.tensor([self._extrema[n] for n in names], dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(values, op=dist.ReduceOp.MAX)
        for name, v in zip(names, values.tolist()):
            result.metrics[name] = -v if name.startswith("min_") else v
        return result


def last_token_hidden(model: nn.Module, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, dim): the final norm's output at each row's last real token (captured by a hook on ``model.norm``, so
    the model runs unchanged, FSDP2-wrapped or not)."""
    captured: dict[str, torch.Tensor] = {}
    handle = model.norm.register_forward_hook(lambda _m, _i, out: captured.__setitem__("h", out))
    try:
        model(tokens)
    finally:
        handle.remove()
    hidden = captured["h"]
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), (lengths.to(hidden.device) - 1).clamp(min=0)]


def reward_loss_fn(cfg: RewardConfig, trainer: RewardTrainer):
    head = trainer.extras["score_head"]

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, Any]]:
        pooled = last_token_hidden(model, batch["input_ids"], batch["lengths"])
        rewards = head(pooled.to(head.weight.dtype)).squeeze(-1).float()
        rc, rr = rewards.chunk(2)
        losses = reward_losses(rc, rr, batch["margin"] if cfg.use_margin else None)
        if cfg.center_rewards_coefficient:
            losses = losses + cfg.center_rewards_coefficient * center_penalty(rc, rr)
        pairs = rc.numel()
        with torch.no_grad():
            r = rewards.detach().double()
            trainer.note("min_reward", float(r.min()))
            trainer.note("max_reward", float(r.max()))
            metrics = {"accuracy": (float((rc > rr).sum()), pairs), "margin": (float((rc - rr).double().sum()), pairs),
                       "mean_reward": (float(r.sum()), 2 * pairs), "num_tokens": float(batch["lengths"].sum())}
        return losses.sum(), pairs, metrics

    return loss_fn


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: RewardConfig = ctx.cfg.reward
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    args = read_weights(source).args
    seed = cfg.train.seed if cfg.train.seed >= 0 else ctx.cfg.run.seed
    head = nn.Linear(args.dim, 1, bias=False)
    with torch.no_grad():  # drawn from the seed alone: the same head on every rank and every attempt
        head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(seed))
                          * args.init_std)
    with distributed(ctx, cfg.train) as device:
        trainer = RewardTrainer(ctx, cfg.train, source, device, lora=cfg.lora, extra_modules={"score_head": head})
        if cfg.train.max_len > trainer.args.max_seq_len:
            raise ValueError(f"reward.train.max_len={cfg.train.max_len} exceeds the model's max_seq_len "
                             f"{trainer.args.max_seq_len} ({source})")
        files = preference_files(ctx, cfg.data, "reward")
        data = read_preference_data(ctx, files, trainer.tokenizer, cfg.train.max_len, trainer.rank)
        pad_id = pad_id_of(trainer.tokenizer)
        log.info("reward: %d pairs (%d quarantined) from %d files", len(data.pairs),
                 sum(data.quarantined.values()), len(files))

        def batch(slot: BatchSlot) -> dict[str, torch.Tensor]:
            pairs = [data.pairs[i] for i in slot.indices(len(data.pairs))]
            b = collate_pairs(pairs, pad_id)
            margin = torch.tensor([p.margin or 0.0 for p in pairs], dtype=torch.float32)
            return {"input_ids": b.input_ids, "lengths": b.lengths, "margin": margin}

        stats = trainer.fit(batch, reward_loss_fn(cfg, trainer), cumulative=("num_tokens",))
        if trainer.rank == 0:
            _save(ctx, trainer, stats, source)
    return {
        **stats,
        "docs_in": data.records_in,
        "docs_out": len(data.pairs),
        "quarantined": sum(data.quarantined.values()),
        "quarantine_reasons": data.quarantined,
        "dropped": {},
        "data_files": [str(f) for f in files],
        "reward_model": str(ctx.stage_dir / FOLDER),
        "epochs": round(cfg.train.steps * cfg.train.global_batch_size / len(data.pairs), 3),
    }


def _save(ctx: StageContext, trainer: RewardTrainer, stats: dict[str, Any], source: Any) -> None:
    """``reward_model/`` from the final checkpoint (the merged backbone) and the trained head."""
    final = stats["last_checkpoint"]
    weights = read_weights(final)
    model = RewardModel.from_policy(build_model(weights), head_seed=0)
    with torch.no_grad():
        model.score_head.weight.copy_(trainer.extras["score_head"].weight.detach().cpu())
    save_reward_model(model, ctx.stage_dir / FOLDER, weights.tokenizer_files,
                      {"checkpoint": final, "init_from": str(source), "steps": stats["steps"]})
