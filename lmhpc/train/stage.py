"""The pretrain stage (torch-native backend): a "torch" stage of N processes.

The launcher (torchrun locally, one SLURM task per process with submitit's
``TorchDistributedEnvironment``) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
this module joins the process group (gloo on CPU, NCCL on GPU), builds the mesh, the model, its
parallel layout, optimizer and data, resumes from the newest complete checkpoint, and trains.

At every step boundary the ranks agree on the preemption flag; if any rank got the signal, all
save one synchronous checkpoint and raise :class:`~lmhpc.launch.preempt.Preempted` (the runner
requeues the job). The requeued job resumes where it stopped, with the same loss curve.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmhpc.context import StageContext
from lmhpc.data.blend import BLEND_FILE, read_blend
from lmhpc.exchange.initialise import initialise_from
from lmhpc.exchange.weights import args_to_dict
from lmhpc.launch.preempt import Preempted
from lmhpc.model.transformer import ModelArgs, Transformer, count_params, flops_per_token
from lmhpc.train.checkpoint import CheckpointManager, latest_step
from lmhpc.train.config import PretrainConfig
from lmhpc.train.data import GlobalBatches, TokenIds, tokenizer_vocab
from lmhpc.train.heldout import HeldOutEval, heldout_sequences
from lmhpc.train.loop import Trainer
from lmhpc.train.materialize import materialize, meta_model, read_start_weights
from lmhpc.train.metrics import MetricsFile, device_peak_flops, memory_stats, throughput
from lmhpc.train.optim import build_optimizer, lr_at, set_lr
from lmhpc.train.parallel import ParallelDims, cut_stage, parallelize, stage_ids

log = logging.getLogger("lmhpc.pretrain")

METRICS_FILE = "metrics.jsonl"


def pick_device(choice: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU where CUDA is available, else the CPU."""
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("pretrain.train.device=cuda but CUDA is not available on this machine")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(rank: int, world_size: int, device: torch.device) -> bool:
    """Join (or create) the default process group; returns True if this call created it."""
    if dist.is_initialized():
        return False
    timeout = timedelta(minutes=int(os.environ.get("LMHPC_DIST_TIMEOUT_MIN", "30")))
    if world_size == 1:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    else:
        # LMHPC_DIST_BACKEND overrides the choice, e.g. "gloo" for several ranks sharing one GPU
        # (NCCL refuses two ranks on the same device)
        backend = os.environ.get("LMHPC_DIST_BACKEND") or ("cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    return True


def resolve_data(ctx: StageContext, cfg: PretrainConfig) -> tuple[list[str], list[float] | None, int | None]:
    """Prefixes, weights (None: by size) and the end-of-document id the data was written with (if known)."""
    if cfg.data.prefixes:
        return [str(ctx.cfg.path(p)) for p in cfg.data.prefixes], list(cfg.data.weights) or None, None
    return read_blend(ctx.inputs["tokenize"] / BLEND_FILE)


def tokenizer_path(ctx: StageContext, cfg: PretrainConfig) -> Path:
    """The sentencepiece model the data was tokenized with."""
    return ctx.cfg.path(cfg.data.tokenizer) if cfg.data.tokenizer else ctx.inputs["tokenizer"] / "tokenizer.model"


def resolve_vocab(ctx: StageContext, cfg: PretrainConfig, data_eod: int | None) -> tuple[int, int]:
    """(vocabulary size padded to ``train.vocab_multiple_of``, end-of-document id)."""
    vocab = cfg.model.vocab_size
    eod = cfg.data.eod_id if cfg.data.eod_id >= 0 else (data_eod if data_eod is not None else -1)
    if not vocab or eod < 0:
        sp_vocab, sp_eod = tokenizer_vocab(tokenizer_path(ctx, cfg))
        vocab = vocab or sp_vocab
        eod = eod if eod >= 0 else sp_eod
    multiple = cfg.train.vocab_multiple_of
    return -(-vocab // multiple) * multiple, eod


def build_pipeline(parts: list[torch.nn.Module], ids: list[int], dims: ParallelDims, device: torch.device,
                   trainer_loss, n_micro: int, schedule_name: str):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    num_stages = dims.size("pp") * dims.cfg.pp_stages_per_rank
    group = dims.group(("pp",), "pp")
    stages = [PipelineStage(part, sid, num_stages, device, group=group) for part, sid in zip(parts, ids)]
    if schedule_name == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(stages, n_micro, loss_fn=trainer_loss, scale_grads=False)
    cls = Schedule1F1B if schedule_name == "1f1b" else ScheduleGPipe
    return cls(stages[0], n_micro, loss_fn=trainer_loss, scale_grads=False)


def run(ctx: StageContext) -> dict[str, Any]:
    """Train; returns the stage's stats."""
    cfg = ctx.cfg.pretrain
    if cfg.backend == "megatron":
        from lmhpc.train.megatron.stage import run as run_megatron

        return run_megatron(ctx)
    device = pick_device(cfg.train.device, ctx.local_rank)
    created = init_distributed(ctx.rank, ctx.world_size, device)
    try:
        return train(ctx, cfg, device)
    finally:
        if created:
            dist.destroy_process_group()


def train(ctx: StageContext, cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    t_start = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    seed = cfg.train.seed if cfg.train.seed >= 0 else ctx.cfg.run.seed
    dims = ParallelDims.build(cfg.parallel, world, rank, device.type)
    prefixes, weights, data_eod = resolve_data(ctx, cfg)
    vocab, eod = resolve_vocab(ctx, cfg, data_eod)
    if vocab % dims.size("tp"):
        raise ValueError(f"padded vocabulary {vocab} is not divisible by tp={dims.size('tp')}")
    args: ModelArgs = dataclasses.replace(cfg.model, vocab_size=vocab)
    global_batch = cfg.global_batch(dims.cfg.dp)
    data = GlobalBatches(prefixes, weights, cfg.train.seq_len, global_batch,
                         num_samples=cfg.train.steps * global_batch, seed=seed,
                         cache_dir=ctx.stage_dir / "data_cache", token_ids=TokenIds(vocab, eod))

    torch.manual_seed(seed)
    if cfg.train.meta_init:
        # parameters on meta; each rank allocates and initialises its own shards in parallelize()
        model = meta_model(args)
        start = read_start_weights(ctx.cfg.path(cfg.init_from), args) if cfg.init_from else None
        materializer = functools.partial(materialize, device=device, seed=seed, weights=start)
    else:
        model = Transformer(args, init_seed=seed)  # whole model, same init on every rank, whatever the layout
        if cfg.init_from:  # a checkpoint to resume from replaces these weights below
            initialise_from(model, ctx.cfg.path(cfg.init_from))
        materializer = None
    n_params = count_params(model)
    fpt = flops_per_token(args, cfg.train.seq_len)
    if dims.size("pp") > 1:
        ids = stage_ids(dims)
        num_stages = dims.size("pp") * dims.cfg.pp_stages_per_rank
        parts = [cut_stage(model, num_stages, i) for i in ids]
        del model
    else:
        ids, num_stages, parts = [0], 1, [model]
    parts = [parallelize(p, dims, cfg.train, device, materializer) for p in parts]
    start = None  # the starting weights, if any, are in the shards now
    optimizers = [build_optimizer(p, args, cfg.optimizer) for p in parts]
    trainer = Trainer(cfg, dims, parts, optimizers, data, device)
    if dims.size("pp") > 1:
        trainer.schedule = build_pipeline(parts, ids, dims, device, trainer.loss_fn, dims.cfg.microbatches,
                                          dims.cfg.pp_schedule)
        trainer.has_first, trainer.has_last = 0 in ids, num_stages - 1 in ids

    ckpt_dir = ctx.stage_dir / "checkpoints"
    ckpt = CheckpointManager(ckpt_dir, parts, optimizers, cfg.checkpoint.keep_last, cfg.checkpoint.async_save)
    resume = [latest_step(ckpt_dir) if rank == 0 else None]
    dist.broadcast_object_list(resume, src=0)
    step = data_step = 0
    if resume[0] is not None:
        t_load = time.perf_counter()
        state = ckpt.load(resume[0])
        step, data_step = int(state["step"]), int(state["data_step"])
        trainer.guard.restore(state.get("spike_guard", {}))
        ctx.event("restored", step=step, seconds=round(time.perf_counter() - t_load, 3))
    start_step = step
    last_saved = step if resume[0] is not None else -1

    def train_state() -> dict[str, Any]:
        # the model's shape and tokenizer travel with each checkpoint (lmhpc.exchange reads them)
        return {"step": step, "data_step": data_step, "spike_guard": trainer.guard.state(),
                "world_size": world, "seed": seed, "global_batch": global_batch,
                "model_args": args_to_dict(args), "tokenizer": str(tokenizer_path(ctx, cfg))}

    heldout, heldout_log = None, []
    if cfg.eval.interval:
        rows = heldout_sequences(cfg.eval.texts, ctx.cfg.path, tokenizer_path(ctx, cfg), eod, cfg.train.seq_len,
                                 cfg.eval.max_tokens, ctx.stage_dir / "quarantine" / f"heldout-rank{rank}.jsonl")
        heldout = HeldOutEval(rows, dims.cfg.dp, dims.dp_rank, cfg.train.micro_batch_size, dims.coord("tp") == 0,
                              device)
    metrics_file = MetricsFile(ctx.stage_dir / METRICS_FILE, step) if rank == 0 else None
    peak = device_peak_flops(device, cfg.metrics.peak_tflops)
    tokens_per_step = global_batch * cfg.train.seq_len
    log.info("pretrain: %s params, %.3g FLOPs/token, mesh %s, global batch %d × %d tokens, steps %d→%d on %s",
             f"{n_params:,}", fpt, _mesh_text(dims), global_batch, cfg.train.seq_len, step, cfg.train.steps, device)
    train_seconds, train_cpu_seconds, timed_steps, timed_tokens = 0.0, 0.0, 0, 0
    last: dict[str, Any] = {}
    try:
        while step < cfg.train.steps:
            iteration_start, iteration_cpu = time.perf_counter(), time.process_time()
            # the ranks agree on the preemption flag in the step's first collective (ctx.should_stop()
            # is this rank's flag; any rank's flag stops them all)
            prepared, stop = trainer.prepare_step(data_step, ctx.should_stop())
            if stop:
                ckpt.finish_pending()
                if step == 0:  # nothing trained: the next attempt starts over, exactly as this one did
                    raise Preempted("preemption signal before the first step: nothing to save")
                if last_saved != step:
                    ckpt.save(step, train_state(), synchronous=True)
                raise Preempted(f"preemption signal: checkpoint at step {step} saved")
            lr = lr_at(step, cfg.train.steps, cfg.optimizer)
            set_lr(optimizers, lr)
            t0 = time.perf_counter()
            outcome = trainer.train_step(step, data_step, prepared)
            seconds = time.perf_counter() - t0
            data_step += 1
            if outcome.rollback:
                back = _rollback(ckpt, ckpt_dir, rank)
                log.warning("rolled back from step %d to checkpoint step %d; data continues at batch %d",
                            step, back, data_step)
                step = last_saved = back
                if metrics_file is not None:
                    metrics_file.close()
                    metrics_file = MetricsFile(ctx.stage_dir / METRICS_FILE, step)
                continue
            step += 1
            if step % cfg.metrics.log_every == 0 or step == cfg.train.steps:
                last = {"step": step, "loss": outcome.loss, "lr": lr, "grad_norm": outcome.grad_norm,
                        "update_applied": outcome.applied, "loss_tokens": outcome.loss_tokens,
                        "data_step": data_step, "step_seconds": seconds,
                        **throughput(tokens_per_step, seconds, world, fpt, peak)}
                moe = trainer.moe_stats()
                if moe:
                    last["moe"] = moe
                if rank == 0:
                    metrics_file.write(last)
                    ctx.tracker.log({**last, "memory": memory_stats(device)}, step=step)
            if heldout is not None and step % cfg.eval.interval == 0:
                heldout_log.append(heldout.record(step, heldout.loss(parts[0], trainer._autocast)))
                log.info("step %d: held-out loss %.4f, perplexity %.2f", step, heldout_log[-1]["loss"],
                         heldout_log[-1]["perplexity"])
                ctx.tracker.log({"heldout": heldout_log[-1]}, step=step)
            if step > start_step + 1:  # whole iterations but checkpoint saves; the first pays for warm-up
                train_seconds += time.perf_counter() - iteration_start
                train_cpu_seconds += time.process_time() - iteration_cpu
                timed_steps += 1
                timed_tokens += tokens_per_step
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < cfg.train.steps:
                ckpt.save(step, train_state())
                last_saved = step
        ckpt.finish_pending()
        if cfg.checkpoint.save_final and last_saved != step:
            ckpt.save(step, train_state(), synchronous=True)
            last_saved = step
    finally:
        if metrics_file is not None:
            metrics_file.close()

    steady = throughput(timed_tokens, train_seconds, world, fpt, peak) if timed_steps else {}
    return {
        "steps": step,
        "resumed_from_step": start_step if start_step else None,
        "final_loss": last.get("loss"),
        "final_lr": last.get("lr"),
        "params": n_params,
        "flops_per_token": fpt,
        "tokens_trained": step * tokens_per_step,
        "global_batch_sequences": global_batch,
        "seq_len": cfg.train.seq_len,
        "world_size": world,
        "mesh": _mesh_text(dims),
        "device": str(device),
        "precision": cfg.train.precision + ("+fp8" + ("-emulated" if cfg.train.fp8_emulate else "") if cfg.train.fp8
                                             else ""),
        "steady_tokens_per_s": steady.get("tokens_per_s"),
        "steady_tokens_per_s_per_device": steady.get("tokens_per_s_per_device"),
        "steady_tflops_per_device": steady.get("tflops_per_device"),
        # tokens per second of this process's CPU time (all its threads): load from other processes
        # on a shared machine does not change it, unlike wall-clock tokens/s
        "steady_tokens_per_cpu_s": timed_tokens / world / train_cpu_seconds if train_cpu_seconds else None,
        "mfu_pct": steady.get("mfu_pct"),
        "spikes_skipped": trainer.guard.skipped,
        "rollbacks": trainer.guard.rollbacks,
        "checkpoints_saved": ckpt.saves,
        "checkpoint_seconds": round(ckpt.save_seconds, 3),
        "last_checkpoint": str(ckpt_dir / f"step-{last_saved}") if last_saved >= 0 else None,
        "attempt_seconds": round(time.time() - t_start, 3),
        "memory": memory_stats(device),
        "heldout": heldout_log or None,
    }


def _rollback(ckpt: CheckpointManager, folder: Path, rank: int) -> int:
    ckpt.finish_pending()
    target = [latest_step(folder) if rank == 0 else None]
    dist.broadcast_object_list(target, src=0)
    if target[0] is None:
        raise RuntimeError("loss spike with policy 'rollback' but there is no checkpoint to roll back to")
    ckpt.load(target[0])
    return int(target[0])


def _mesh_text(dims: ParallelDims) -> str:
    c = dims.cfg
    return f"pp{c.pp}×dp_replicate{c.dp_replicate}×dp_shard{c.dp_shard}×cp{c.cp}×tp{c.tp}"
