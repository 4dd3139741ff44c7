"""AdamW with μP-aware parameter groups, and the learning-rate schedule (warmup, then cosine / WSD)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lmhpc.model.transformer import ModelArgs
from lmhpc.train.config import OptimizerConfig
from lmhpc.train.parallel import is_expert_param

NO_DECAY_NAMES = ("A_log", "D", "dt_proj.bias")


def param_groups(model: nn.Module, args: ModelArgs, cfg: OptimizerConfig) -> list[dict]:
    """Groups with an ``lr_mult``: under μP hidden matrices learn at ``lr / width_mult``; embeddings,
    the output layer and vectors at ``lr``. Vectors (norm gains, biases, SSM parameters) have no decay.
    Expert weights sharded by expert parallel live on another device mesh than the FSDP shards, so
    they get groups of their own (the optimizer's foreach kernels run per group)."""
    groups: dict[tuple[float, float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        vector = param.ndim < 2 or name.endswith(NO_DECAY_NAMES)
        embedding_or_output = "tok_embeddings" in name or name.split(".")[-2:-1] == ["output"]
        lr_mult = 1.0 if (vector or embedding_or_output or not args.mup_base_dim) else 1.0 / args.width_mult
        decay = 0.0 if vector else cfg.weight_decay
        groups.setdefault((lr_mult, decay, is_expert_param(param)), []).append(param)
    return [{"params": ps, "lr": cfg.lr * mult, "lr_mult": mult, "weight_decay": decay}
            for (mult, decay, _), ps in sorted(groups.items(), key=lambda kv: kv[0])]


def build_optimizer(model: nn.Module, args: ModelArgs, cfg: OptimizerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, args, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             foreach=True)


def lr_at(step: int, total_steps: int, cfg: OptimizerConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine or WSD decay
    down to ``min_lr_ratio × lr``, or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_steps = max(int(round(total_steps * cfg.decay_fraction)), 1)  # wsd
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min((step - decay_start + 1) / decay_steps, 1.0)
    return cfg.lr + (floor - cfg.lr) * progress


def set_lr(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
