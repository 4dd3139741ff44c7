"""The sft stage: supervised fine-tuning on chat data (:mod:`lmhpc.align.chat`) with the alignment training core
(:mod:`lmhpc.align.trainer`), full or LoRA. Loss: mean cross-entropy over the assistant tokens of the global
batch. Metrics as TRL's SFTTrainer names them: ``loss``, ``entropy`` and ``mean_token_accuracy`` (over the loss
tokens), ``num_tokens`` (tokens seen so far, padding excluded).

Outputs in ``<run>/sft/``: ``checkpoints/step-N/`` (the merged model; ``lmhpc.exchange.load_model`` opens the
folder), ``tokenizer/``, ``metrics.jsonl``, ``quarantine/chat.jsonl`` (bad records with their reason).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmhpc.align.chat import Row, collate, packed_rows, padded_rows, read_chat_files
from lmhpc.align.config import CONSTITUTIONAL, MODEL_STAGES, SftConfig
from lmhpc.align.trainer import AlignTrainer, BatchSlot, distributed
from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.exchange.source import model_source

log = logging.getLogger("lmhpc.sft")

CONSTITUTIONAL_SFT = "sft.jsonl"
QUARANTINE_FILE = "quarantine/chat.jsonl"


def sft_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, dict[str, Any]]:
    """Summed cross-entropy of the assistant tokens, their count, and entropy / accuracy / token counts."""
    tokens, mask = batch["tokens"], batch["loss_mask"]
    logits = model(tokens, batch.get("positions"))[:, :-1].float()
    targets = tokens[:, 1:]
    logp = torch.log_softmax(logits, dim=-1)
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    n = int(mask.sum())
    loss = -(token_logp * mask).sum()
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
        correct = (logits.argmax(-1) == targets) & mask
        metrics = {"entropy": (float((entropy * mask).sum()), n), "mean_token_accuracy": (float(correct.sum()), n),
                   "num_tokens": float(batch["real"].sum())}
    return loss, n, metrics


def data_files(ctx: StageContext, cfg: SftConfig) -> list[Path]:
    """The configured files, then the constitutional stage's revisions when the run chains it."""
    files = cfg.data_files(ctx.cfg)
    if CONSTITUTIONAL in ctx.inputs:
        revisions = ctx.stage_output(CONSTITUTIONAL) / CONSTITUTIONAL_SFT
        if not revisions.is_file():
            raise FileNotFoundError(f"the constitutional stage left no {CONSTITUTIONAL_SFT}: {revisions}")
        files.append(revisions)
    return files


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: SftConfig = ctx.cfg.sft
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    with distributed(ctx, cfg.train) as device:
        trainer = AlignTrainer(ctx, cfg.train, source, device, lora=cfg.lora)
        if cfg.train.max_len > trainer.args.max_seq_len:
            raise ValueError(f"sft.train.max_len={cfg.train.max_len} exceeds the model's max_seq_len "
                             f"{trainer.args.max_seq_len} ({source})")
        if cfg.packing and "M" in trainer.args.layer_pattern:
            raise ValueError("sft.packing: Mamba layers carry state across packed conversations; use packing=false")
        files = data_files(ctx, cfg)
        quarantine = Quarantine(ctx.stage_dir / QUARANTINE_FILE) if trainer.rank == 0 else None
        try:
            data = read_chat_files(files, trainer.tokenizer, cfg.train.max_len, quarantine)
        finally:
            if quarantine is not None:
                quarantine.close()
        if not data.examples:
            raise ValueError(f"sft: no usable conversation in {[str(f) for f in files]} "
                             f"(quarantined by reason: {data.quarantined})")
        rows = packed_rows(data.examples, cfg.train.max_len, trainer.seed) if cfg.packing else \
            padded_rows(data.examples)
        pad_id = trainer.tokenizer.pad_id if getattr(trainer.tokenizer, "pad_id", None) is not None else 0
        log.info("sft: %d conversations (%d quarantined) from %d files → %d rows (%s)", len(data.examples),
                 sum(data.quarantined.values()), len(files), len(rows), "packed" if cfg.packing else "padded")

        def batch(slot: BatchSlot) -> dict[str, torch.Tensor]:
            chosen: list[Row] = [rows[i] for i in slot.indices(len(rows))]
            return collate(chosen, pad_id, cfg.packing)

        stats = trainer.fit(batch, sft_loss, cumulative=("num_tokens",))
    quarantined = sum(data.quarantined.values())
    return {
        **stats,
        "docs_in": data.records_in,
        "docs_out": len(data.examples),
        "quarantined": quarantined,
        "quarantine_reasons": data.quarantined,
        "dropped": {},
        "data_files": [str(f) for f in files],
        "rows": len(rows),
        "packing": cfg.packing,
        "epochs": round(cfg.train.steps * cfg.train.global_batch_size / len(rows), 3),
        "assistant_tokens": sum(sum(e.assistant) for e in data.examples),
        "tokens": sum(len(e.tokens) for e in data.examples),
    }
