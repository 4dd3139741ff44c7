"""The dpo stage: direct preference optimisation on the alignment core (:mod:`lmhpc.align.trainer`), against the
reference log-probs the reference stage stored (only the policy is in memory).

Per step: ``train.global_batch_size`` pairs drawn by the core's seeded epochs, each micro-batch packed (each pair's
prompt once, then its chosen and rejected responses, no padding: :mod:`lmhpc.preference.packing`) or, with
``dpo.packing: false``, padded ``[chosen; rejected]`` rows; summed response log-probs of the policy, the loss of
``dpo.loss_type`` averaged over the global batch's pairs. Metrics as TRL 1.16 logs them: ``loss``,
``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``,
``logps/rejected`` (per pair), ``logits/chosen``, ``logits/rejected``, ``entropy`` (per response token),
``mean_token_accuracy`` (chosen response tokens), ``num_tokens`` (running total of prompt+response tokens).

Outputs in ``<run>/dpo/``: ``checkpoints/step-N/`` (``lmhpc.exchange.load_model`` opens the folder; LoRA merged),
``tokenizer/``, ``metrics.jsonl``, ``quarantine/pairs.jsonl``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from lmhpc.align.trainer import AlignTrainer, BatchSlot, distributed
from lmhpc.context import StageContext
from lmhpc.exchange.load import read_weights
from lmhpc.exchange.source import model_source
from lmhpc.preference.common import (
    check_reference,
    preference_files,
    read_preference_data,
    read_reference,
    weights_fingerprint,
)
from lmhpc.preference.config import MODEL_STAGES, REFERENCE, DpoConfig
from lmhpc.preference.data import collate_pairs, pad_id_of
from lmhpc.preference.logps import packed_scores, response_scores, split_pairs
from lmhpc.preference.losses import dpo_losses, dpo_metric_sums
from lmhpc.preference.packing import pack_pairs, use_shared_prompt_attention

log = logging.getLogger("lmhpc.dpo")

PER_PAIR = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected")


def dpo_loss_fn(cfg: DpoConfig):
    """The core's ``loss_fn(model, batch)``: (summed per-pair losses, pairs, metrics)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, Any]]:
        if cfg.packing:
            scores = packed_scores(model, batch)
        else:
            scores = response_scores(model(batch["input_ids"]), batch["input_ids"], batch["response_mask"])
        chosen, rejected = split_pairs(scores)
        losses, chosen_rewards, rejected_rewards = dpo_losses(
            chosen.logps, rejected.logps, batch["ref_chosen"], batch["ref_rejected"], loss_type=cfg.loss_type,
            beta=cfg.beta, label_smoothing=cfg.label_smoothing, length_normalize=cfg.length_normalize,
            chosen_tokens=chosen.tokens, rejected_tokens=rejected.tokens)
        s = {k: float(v) for k, v in dpo_metric_sums(chosen, rejected, chosen_rewards, rejected_rewards).items()}
        pairs = s["pairs"]
        tc, tr = s["tokens/chosen"], s["tokens/rejected"]
        metrics: dict[str, Any] = {k: (s[k], pairs) for k in PER_PAIR}
        metrics.update({"logits/chosen": (s["logits/chosen"], tc), "logits/rejected": (s["logits/rejected"], tr),
                        "entropy": (s["entropy"], tc + tr), "mean_token_accuracy": (s["top1/chosen"], tc),
                        "num_tokens": float(batch["lengths"].sum())})
        return losses.sum(), int(pairs), metrics

    return loss_fn


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: DpoConfig = ctx.cfg.dpo
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    ref_dir = ctx.stage_output(REFERENCE)
    reference = read_reference(ref_dir)
    model_fingerprint = weights_fingerprint(read_weights(source))
    with distributed(ctx, cfg.train) as device:
        trainer = AlignTrainer(ctx, cfg.train, source, device, lora=cfg.lora)
        if cfg.train.max_len > trainer.args.max_seq_len:
            raise ValueError(f"dpo.train.max_len={cfg.train.max_len} exceeds the model's max_seq_len "
                             f"{trainer.args.max_seq_len} ({source})")
        files = preference_files(ctx, cfg.data, "dpo")
        data = read_preference_data(ctx, files, trainer.tokenizer, cfg.train.max_len, trainer.rank)
        check_reference(reference, data, model_fingerprint, ref_dir)
        if cfg.packing:
            use_shared_prompt_attention(trainer.model)
        pad_id = pad_id_of(trainer.tokenizer)
        log.info("dpo: %d pairs (%d quarantined) from %d files, loss %s, beta %g, reference log-probs from %s",
                 len(data.pairs), sum(data.quarantined.values()), len(files), cfg.loss_type, cfg.beta, ref_dir)

        def batch(slot: BatchSlot) -> dict[str, torch.Tensor]:
            index = slot.indices(len(data.pairs))
            chosen = [data.pairs[i] for i in index]
            ref_chosen, ref_rejected = reference.for_pairs(index)
            if cfg.packing:
                return {**pack_pairs(chosen), "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}
            b = collate_pairs(chosen, pad_id)
            return {"input_ids": b.input_ids, "response_mask": b.response_mask, "lengths": b.lengths,
                    "ref_chosen": ref_chosen, "ref_rejected": ref_rejected}

        stats = trainer.fit(batch, dpo_loss_fn(cfg), cumulative=("num_tokens",))
    return {
        **stats,
        "docs_in": data.records_in,
        "docs_out": len(data.pairs),
        "quarantined": sum(data.quarantined.values()),
        "quarantine_reasons": data.quarantined,
        "dropped": {},
        "data_files": [str(f) for f in files],
        "loss_type": cfg.loss_type,
        "beta": cfg.beta,
        "epochs": round(cfg.train.steps * cfg.train.global_batch_size / len(data.pairs), 3),
        "reference": str(ref_dir),
    }
