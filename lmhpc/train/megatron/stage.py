"""The pretrain stage with ``backend: megatron``: megatron-core's GPT model, DDP + distributed optimizer and
pipeline schedules, on CUDA GPUs (NCCL).

The stage contract is the native backend's: the run's ``.bin/.idx`` blend in the same sample order
(megatron-core's ``BlendedMegatronDatasetBuilder``), the learning-rate curve of :func:`lmhpc.train.optim.lr_at`,
step folders ``checkpoints/step-<N>/`` holding megatron-core's distributed checkpoint (``megatron/``) and the
native ``train_state.json``, a ``COMPLETE`` marker written last; at each step boundary the ranks agree on the
preemption flag, save synchronously and raise :class:`~lmhpc.launch.preempt.Preempted` (the runner requeues,
the W&B run id is kept by the tracker); ``metrics.jsonl`` and W&B get the same names (loss, lr, grad_norm,
tokens/s, MFU, memory).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from lmhpc.context import StageContext
from lmhpc.exchange.megatron import CHECKPOINT_SUBDIR, to_megatron
from lmhpc.exchange.weights import args_to_dict
from lmhpc.fsutil import write_json
from lmhpc.launch.preempt import Preempted
from lmhpc.model.transformer import count_params, flops_per_token
from lmhpc.train.checkpoint import COMPLETE_MARKER, TRAIN_STATE, complete_steps, latest_step, step_dir
from lmhpc.train.config import PretrainConfig
from lmhpc.train.data import TokenIds, quiet_megatron
from lmhpc.train.loop import SpikeGuard
from lmhpc.train.megatron import translate
from lmhpc.train.metrics import MetricsFile, device_peak_flops, memory_stats, throughput
from lmhpc.train.optim import lr_at

log = logging.getLogger("lmhpc.pretrain.megatron")

METRICS_FILE = "metrics.jsonl"


def run(ctx: StageContext) -> dict[str, Any]:
    """Train with megatron-core; returns the stage's stats."""
    from lmhpc.train.stage import init_distributed, pick_device

    if not torch.cuda.is_available():
        raise RuntimeError("pretrain.backend=megatron runs on CUDA GPUs only and CUDA is not available on this "
                           "node; use pretrain.backend=native")
    device = pick_device("cuda", ctx.local_rank)
    created = init_distributed(ctx.rank, ctx.world_size, device)
    try:
        return train(ctx, ctx.cfg.pretrain, device)
    finally:
        with quiet_megatron():
            from megatron.core import parallel_state
        parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


class MicroBatches:
    """Step ``s``, micro-batch ``j`` of data-parallel rank ``r``: samples ``s·G + (j·dp + r)·mbs`` onwards."""

    def __init__(self, dataset, global_batch: int, mbs: int, dp: int, dp_rank: int, device: torch.device,
                 causal_mask: bool) -> None:
        self.dataset, self.global_batch, self.mbs, self.dp, self.dp_rank = dataset, global_batch, mbs, dp, dp_rank
        self.device, self.causal_mask = device, causal_mask

    def get(self, data_step: int, micro: int) -> dict[str, torch.Tensor]:
        start = data_step * self.global_batch + (micro * self.dp + self.dp_rank) * self.mbs
        n = len(self.dataset)
        items = [self.dataset[i % n] for i in range(start, start + self.mbs)]
        batch = {k: torch.stack([it[k] for it in items]).to(self.device, non_blocking=True)
                 for k in ("tokens", "labels", "loss_mask", "position_ids")}
        seq = batch["tokens"].shape[1]
        # the local spec's attention takes an explicit mask (True: masked); Transformer Engine's is causal
        batch["attention_mask"] = (torch.triu(torch.ones(seq, seq, dtype=torch.bool, device=self.device), 1)
                                   [None, None] if self.causal_mask else None)
        return batch

    def iterator(self, data_step: int, count: int):
        return iter([self.get(data_step, j) for j in range(count)])


def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    """Sum of token losses and the token count (megatron-core's per-token loss convention)."""
    mask = loss_mask.reshape(-1).float()
    total = torch.sum(output.float().reshape(-1) * mask)
    tokens = mask.sum()
    return total, tokens.to(torch.int), {"lm loss": torch.stack([total.detach(), tokens.detach()])}


def _forward_step(data_iterator, model):
    from megatron.core.utils import get_batch_on_this_cp_rank

    batch = get_batch_on_this_cp_rank(next(data_iterator))
    output = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
    return output, functools.partial(_loss_func, batch["loss_mask"])


def train(ctx: StageContext, cfg: PretrainConfig, device: torch.device) -> dict[str, Any]:
    from lmhpc.train.stage import resolve_data, resolve_vocab, tokenizer_path

    with quiet_megatron():
        from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
        from megatron.core.distributed import DistributedDataParallel, finalize_model_grads
        from megatron.core.models.gpt import GPTModel
        from megatron.core.optimizer import get_megatron_optimizer
        from megatron.core.pipeline_parallel import get_forward_backward_func

    t_start = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    seed = cfg.train.seed if cfg.train.seed >= 0 else ctx.cfg.run.seed
    p = cfg.parallel.resolved(world)
    vpp = p.pp_stages_per_rank if p.pp > 1 and p.pp_stages_per_rank > 1 else None
    ddp_cfg = translate.ddp_config(cfg, world)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=p.tp, pipeline_model_parallel_size=p.pp, virtual_pipeline_model_parallel_size=vpp,
        context_parallel_size=p.cp, expert_model_parallel_size=p.ep,
        num_distributed_optimizer_instances=ddp_cfg.num_distributed_optimizer_instances)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)

    prefixes, weights, data_eod = resolve_data(ctx, cfg)
    vocab, eod = resolve_vocab(ctx, cfg, data_eod)
    if vocab % p.tp:
        raise ValueError(f"padded vocabulary {vocab} is not divisible by tp={p.tp}")
    args = dataclasses.replace(cfg.model, vocab_size=vocab)
    sched = translate.schedule(cfg, world)
    tcfg = translate.transformer_config(cfg, world)
    spec_name = translate.resolve_spec(cfg.megatron.spec, translate.te_available())
    spec = translate.layer_spec(cfg, spec_name)

    chunks = []
    for vp in range(vpp or 1):
        stage = vp if vpp else None
        model = GPTModel(config=tcfg, transformer_layer_spec=spec,
                         pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                         post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                         vp_stage=stage, **translate.gpt_model_kwargs(cfg, vocab))
        chunks.append(model.to(device))
    if cfg.init_from:  # tp = pp = 1 (validated): the whole model is chunk 0
        from lmhpc.train.materialize import read_start_weights

        start = read_start_weights(ctx.cfg.path(cfg.init_from), args)
        missing, unexpected = chunks[0].load_state_dict(to_megatron(start.state, args, spec_name), strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise ValueError(f"pretrain.init_from: weights do not fit the megatron model: missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}")
    if tcfg.bf16:  # bf16 parameters and compute; the optimizer keeps fp32 master weights
        with quiet_megatron():
            from megatron.core.transformer.module import Float16Module
        chunks = [Float16Module(tcfg, m) for m in chunks]
    chunks = [DistributedDataParallel(config=tcfg, ddp_config=ddp_cfg, module=m, disable_bucketing=i > 0)
              for i, m in enumerate(chunks)]
    for c in chunks:
        c.broadcast_params()
    optimizer = get_megatron_optimizer(translate.optimizer_config(cfg, world), chunks)
    tcfg.grad_scale_func = optimizer.scale_loss
    tcfg.finalize_model_grads_func = finalize_model_grads
    if ddp_cfg.overlap_grad_reduce:
        sync = [c.no_sync for c in chunks]
        tcfg.no_sync_func = sync[0] if len(sync) == 1 else sync

    dp_rank = parallel_state.get_data_parallel_rank()
    dataset = translate.build_train_dataset(
        translate.dataset_config(prefixes, weights, cfg.train.seq_len, seed, ctx.stage_dir / "data_cache",
                                 TokenIds(vocab, eod)),
        num_samples=cfg.train.steps * sched.global_batch)
    batches = MicroBatches(dataset, sched.global_batch, sched.micro_batch_size, sched.data_parallel, dp_rank, device,
                           causal_mask=spec_name == "local")
    forward_backward = get_forward_backward_func()
    guard = SpikeGuard(cfg.spike)

    ckpt_dir = ctx.stage_dir / "checkpoints"
    stepped = [False]  # does the optimizer hold states yet (a step taken, or a checkpoint loaded)

    def sharded_state(loading: bool = False) -> dict[str, Any]:
        if len(chunks) == 1:
            state = {"model": chunks[0].module.sharded_state_dict()}
        else:
            state = {f"model{i}": c.module.sharded_state_dict() for i, c in enumerate(chunks)}
        # loading: the optimizer describes states it has not created yet (no step taken in this process)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=loading)
        return state

    def save(step: int, data_step: int) -> Path:
        path = step_dir(ckpt_dir, step)
        if rank == 0:
            if path.exists():
                shutil.rmtree(path)
            (path / CHECKPOINT_SUBDIR).mkdir(parents=True)
        dist.barrier()
        # before the first optimizer step of this process the optimizer has no states to describe: ask for
        # them as for loading (initialised ones), as megatron does
        dist_checkpointing.save(sharded_state(loading=not stepped[0]), str(path / CHECKPOINT_SUBDIR))
        dist.barrier()
        if rank == 0:
            write_json(path / TRAIN_STATE, {
                "step": step, "data_step": data_step, "spike_guard": guard.state(), "world_size": world,
                "seed": seed, "global_batch": sched.global_batch, "model_args": args_to_dict(args),
                "tokenizer": str(tokenizer_path(ctx, cfg)), "backend": "megatron", "megatron_spec": spec_name})
            write_json(path / COMPLETE_MARKER, {"step": step})
            for old in complete_steps(ckpt_dir)[:-cfg.checkpoint.keep_last]:
                shutil.rmtree(step_dir(ckpt_dir, old), ignore_errors=True)
        dist.barrier()
        log.info("checkpoint step %d saved: %s", step, path)
        return path

    resume = [latest_step(ckpt_dir) if rank == 0 else None]
    dist.broadcast_object_list(resume, src=0)
    step = data_step = 0
    if resume[0] is not None:
        path = step_dir(ckpt_dir, resume[0])
        loaded = dist_checkpointing.load(sharded_state(loading=True), str(path / CHECKPOINT_SUBDIR))
        for i, c in enumerate(chunks):
            c.module.load_state_dict(loaded["model" if len(chunks) == 1 else f"model{i}"])
        optimizer.load_state_dict(loaded["optimizer"])
        stepped[0] = True  # the optimizer holds states now
        state = json.loads((path / TRAIN_STATE).read_text())
        step, data_step = int(state["step"]), int(state["data_step"])
        guard.restore(state.get("spike_guard", {}))
    start_step, last_saved = step, (step if resume[0] is not None else -1)

    n_params = count_params(_meta_model(args))
    fpt = flops_per_token(args, cfg.train.seq_len)
    peak = device_peak_flops(device, cfg.metrics.peak_tflops)
    tokens_per_step = sched.global_batch * cfg.train.seq_len
    metrics_file = MetricsFile(ctx.stage_dir / METRICS_FILE, step) if rank == 0 else None
    log.info("pretrain (megatron-core, %s spec): %s params, tp%d pp%d%s cp%d ep%d dp%d, global batch %d × %d, "
             "steps %d→%d", spec_name, f"{n_params:,}", p.tp, p.pp, f" vpp{vpp}" if vpp else "", p.cp, p.ep,
             sched.data_parallel, sched.global_batch, cfg.train.seq_len, step, cfg.train.steps)
    last: dict[str, Any] = {}
    train_seconds, timed_steps, timed_tokens, saves = 0.0, 0, 0, 0
    try:
        while step < cfg.train.steps:
            t0 = time.perf_counter()
            flag = torch.tensor([1.0 if ctx.should_stop() else 0.0], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item() > 0:
                if step == 0:  # nothing trained: the next attempt starts over, exactly as this one did
                    raise Preempted("preemption signal before the first step: nothing to save")
                if last_saved != step:
                    save(step, data_step)
                raise Preempted(f"preemption signal: checkpoint at step {step} saved")
            lr = lr_at(step, cfg.train.steps, cfg.optimizer)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
                group["weight_decay"] = cfg.optimizer.weight_decay * group.get("wd_mult", 1.0)
            for c in chunks:
                c.zero_grad_buffer()
            optimizer.zero_grad()
            iters = [batches.iterator(data_step, sched.num_microbatches) for _ in chunks]
            reports = forward_backward(forward_step_func=_forward_step, data_iterator=iters if vpp else iters[0],
                                       model=chunks if vpp else chunks[0], num_microbatches=sched.num_microbatches,
                                       seq_length=cfg.train.seq_len, micro_batch_size=sched.micro_batch_size,
                                       forward_only=False)
            total = torch.zeros(2, device=device)
            if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
                for report in reports:
                    total += report["lm loss"].float()
                dist.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
            if p.pp > 1:  # every rank learns the loss from the last stage
                dist.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
            loss, loss_tokens = (total[0] / total[1].clamp(min=1)).item(), int(total[1].item())
            data_step += 1
            applied, grad_norm = True, float("nan")
            if guard.is_spike(loss, 0.0):
                guard.reject(step, loss, grad_norm)
                guard.skipped += 1
                applied = False
            else:
                ok, grad_norm, _ = optimizer.step()
                stepped[0] = True
                grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
                applied = bool(ok)
                if applied:
                    guard.accept(loss)
            step += 1
            seconds = time.perf_counter() - t0
            if step > start_step + 1:
                train_seconds += seconds
                timed_steps += 1
                timed_tokens += tokens_per_step
            if step % cfg.metrics.log_every == 0 or step == cfg.train.steps:
                last = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "update_applied": applied,
                        "loss_tokens": loss_tokens, "data_step": data_step, "step_seconds": seconds,
                        **throughput(tokens_per_step, seconds, world, fpt, peak)}
                if rank == 0:
                    metrics_file.write(last)
                    ctx.tracker.log({**last, "memory": memory_stats(device)}, step=step)
            if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < cfg.train.steps:
                save(step, data_step)
                last_saved, saves = step, saves + 1
        if cfg.checkpoint.save_final and last_saved != step:
            save(step, data_step)
            last_saved, saves = step, saves + 1
    finally:
        if metrics_file is not None:
            metrics_file.close()

    steady = throughput(timed_tokens, train_seconds, world, fpt, peak) if timed_steps else {}
    return {
        "backend": "megatron", "megatron_spec": spec_name, "steps": step,
        "resumed_from_step": start_step if start_step else None, "final_loss": last.get("loss"),
        "final_lr": last.get("lr"), "params": n_params, "flops_per_token": fpt,
        "tokens_trained": step * tokens_per_step, "global_batch_sequences": sched.global_batch,
        "seq_len": cfg.train.seq_len, "world_size": world,
        "mesh": f"pp{p.pp}×dp{sched.data_parallel}×cp{p.cp}×tp{p.tp}" + (f"×ep{p.ep}" if p.ep > 1 else ""),
        "device": str(device),
        "precision": cfg.train.precision + (f"+fp8-{cfg.megatron.fp8_recipe}" if cfg.train.fp8 else ""),
        "steady_tokens_per_s": steady.get("tokens_per_s"),
        "steady_tokens_per_s_per_device": steady.get("tokens_per_s_per_device"),
        "steady_tflops_per_device": steady.get("tflops_per_device"), "mfu_pct": steady.get("mfu_pct"),
        "spikes_skipped": guard.skipped, "checkpoints_saved": saves,
        "last_checkpoint": str(step_dir(ckpt_dir, last_saved)) if last_saved >= 0 else None,
        "attempt_seconds": round(time.time() - t_start, 3), "memory": memory_stats(device),
    }


def _meta_model(args):
    from lmhpc.train.materialize import meta_model

    return meta_model(args)
