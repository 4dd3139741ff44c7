"""The medusa stage: Medusa-1 heads trained on the run's model (frozen), for ``lmhpc generate --medusa``.

Writes ``heads.safetensors`` and ``medusa.json`` (the heads' shape, the model they belong to, the last step's
figures) in the stage folder, ``metrics.jsonl`` (loss, learning rate, each head's top-1 agreement with the
model's own next token), and checkpoints under ``checkpoints/`` every ``checkpoint_every`` steps and on a
preemption signal; a restarted job resumes from the newest one with bitwise-identical losses.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmhpc.context import StageContext
from lmhpc.launch.preempt import Preempted
from lmhpc.medusa.config import MODEL_STAGES, MedusaConfig
from lmhpc.medusa.heads import HeadsArgs, MedusaHeads, save_heads
from lmhpc.medusa.train import HeadsTrainer, TrainSettings
from lmhpc.tokenizer.indexed import IndexedDatasetReader, exists


def shard_prefixes(ctx: StageContext, cfg: MedusaConfig) -> list[Path]:
    """``medusa.prefixes``, else the tokenize stage's shards (its ``blend.json``, else every ``.idx`` in it)."""
    if cfg.prefixes:
        return [ctx.cfg.path(p) for p in cfg.prefixes]
    from lmhpc.data.blend import BLEND_FILE, read_blend

    folder = ctx.stage_output("tokenize")
    if (folder / BLEND_FILE).is_file():
        return [Path(p) for p in read_blend(folder / BLEND_FILE)[0]]
    return sorted(p.with_suffix("") for p in folder.glob("*.idx"))


def training_tokens(prefixes: list[Path], max_tokens: int, vocab_size: int) -> np.ndarray:
    """The shards' sequences one after another, up to ``max_tokens`` tokens (int64)."""
    if not prefixes:
        raise ValueError("medusa.prefixes: no tokenized shards (chain the tokenize stage or set medusa.prefixes)")
    parts, total = [], 0
    for prefix in prefixes:
        if not exists(prefix):
            raise FileNotFoundError(f"medusa.prefixes: {prefix}.bin/.idx does not exist")
        reader = IndexedDatasetReader(prefix)
        for i in range(len(reader)):
            seq = np.asarray(reader[i], dtype=np.int64)[:max_tokens - total]
            parts.append(seq)
            total += seq.shape[0]
            if total >= max_tokens:
                break
        if total >= max_tokens:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise ValueError(f"medusa.prefixes: token id {int(tokens.max())} is outside the model's vocabulary "
                         f"({vocab_size}): the shards were not made with its tokenizer")
    return tokens


def run(ctx: StageContext) -> dict[str, Any]:
    from lmhpc.exchange import load_model
    from lmhpc.exchange.source import model_source
    from lmhpc.train.metrics import MetricsFile

    cfg: MedusaConfig = ctx.cfg.medusa
    torch.set_num_threads(cfg.threads or max(ctx.cfg.resources_for("medusa").cpus_per_task, 1))
    torch.manual_seed(cfg.seed)
    source = model_source(ctx, cfg.init_from, MODEL_STAGES)
    loaded = load_model(source)
    model = loaded.model
    if any(model.args.layer_kind(i) != "attention" for i in range(model.args.n_layers)):
        raise ValueError(f"{source}: Medusa decoding needs an attention-only model (this one has Mamba layers)")
    settings = TrainSettings(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr,
                             warmup=cfg.warmup, weight_decay=cfg.weight_decay, loss_decay=cfg.loss_decay,
                             target=cfg.target, seed=cfg.seed)
    tokens = training_tokens(shard_prefixes(ctx, cfg), cfg.max_tokens, model.args.vocab_size)
    if tokens.shape[0] < cfg.seq_len + 1:
        raise ValueError(f"medusa.seq_len: {tokens.shape[0]} training tokens, fewer than one window of "
                         f"{cfg.seq_len + 1}")
    heads = MedusaHeads(HeadsArgs(model.args.dim, model.args.vocab_size, cfg.num_heads, cfg.num_layers,
                                  cfg.share_output), model.output)
    trainer = HeadsTrainer(model, heads, tokens, settings)
    checkpoints = ctx.stage_dir / "checkpoints"
    resumed = trainer.resume(checkpoints)
    if resumed:
        ctx.log.info("medusa: resumed at step %d", resumed)
        ctx.event("restored", step=resumed)
    metrics = MetricsFile(ctx.stage_dir / "metrics.jsonl", resumed)
    start, last = time.perf_counter(), {}
    try:
        while trainer.step < cfg.steps:
            if ctx.should_stop():
                if trainer.step == 0:  # nothing trained: the next attempt starts over, exactly as this one did
                    raise Preempted("preemption signal before the first step: nothing to save")
                trainer.save(checkpoints)
                raise Preempted(f"preemption signal: checkpoint at step {trainer.step} saved")
            last = trainer.train_step()
            row = {"step": trainer.step, **last}
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                metrics.write(row)
                ctx.tracker.log(last, step=trainer.step)
                ctx.log.info("medusa step %d/%d: loss %.4f, top-1 %s", trainer.step, cfg.steps, last["loss"],
                             " ".join(f"{v:.2f}" for k, v in last.items() if k.endswith("_top1")))
            if trainer.step % cfg.checkpoint_every == 0 and trainer.step < cfg.steps:
                trainer.save(checkpoints)
    finally:
        metrics.close()
    seconds = time.perf_counter() - start
    save_heads(ctx.stage_dir, heads, {"model": str(source), "steps": cfg.steps, "target": cfg.target,
                                      "final": last})
    return {"steps": cfg.steps, "resumed_from": resumed, "seconds": round(seconds, 2),
            "training_tokens": int(tokens.shape[0]), "heads": str(ctx.stage_dir), **last}
