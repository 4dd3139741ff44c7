"""The training core of every alignment stage (sft, dpo, reward, ppo, grpo, ...), on pretrain's machinery.

A stage supplies what is particular to it; :class:`AlignTrainer` does the rest: the process group and device
(:func:`lmhpc.train.stage.init_distributed` / ``pick_device``), the starting model (anything
:func:`lmhpc.exchange.load_model` opens, normally ``model_source(ctx, cfg.init_from, MODEL_STAGES)``), LoRA
(:mod:`lmhpc.align.lora`), FSDP2 over ``dp_shard`` ranks (:func:`lmhpc.train.parallel.parallelize`), AdamW
with warmup + cosine (:mod:`lmhpc.train.optim`), gradient accumulation with global normalisation, gradient
clipping, checkpoints in ``<stage>/checkpoints/step-N/`` that :func:`lmhpc.exchange.load_model` opens
(``model_args`` and the tokenizer in the train state, LoRA merged into the saved weights), preemption
(synchronous save, then :class:`~lmhpc.launch.preempt.Preempted`), resume from the newest checkpoint with
bitwise-identical losses on CPU, ``metrics.jsonl`` on rank 0, ``ctx.tracker.log`` and a stats dict.

Using it (a stage's ``run(ctx)``)::

    cfg = ctx.cfg.sft
    with distributed(ctx, cfg.train) as device:
        trainer = AlignTrainer(ctx, cfg.train, model_source(ctx, cfg.init_from, MODEL_STAGES), device,
                               lora=cfg.lora, extra_modules={"value_head": head})   # extras: optional
        ref = trainer.load_frozen(path)                # optional frozen second model (no grad, eval mode)
        def batch(slot: BatchSlot): ...                # this rank's micro-batch ``slot.micro`` of step ``slot.step``
        def loss_fn(model, batch): ...                 # -> (loss_sum, n_normaliser, metrics)
        return trainer.fit(batch, loss_fn, cumulative=("num_tokens",))

- ``batch(slot)`` must be a pure function of ``slot`` (and the seed): resume replays steps from the
  checkpoint's step. :meth:`BatchSlot.indices` gives the record indices of the slot from a seeded permutation per
  epoch; :meth:`BatchSlot.generator` a ``torch.Generator`` for sampling (rollouts) seeded by seed, step and slot.
  Tensors in the returned batch (dicts, lists and tuples are walked) are moved to the device.
- ``loss_fn(model, batch)`` returns ``loss_sum`` (a scalar tensor: the *sum* of the per-token or per-example
  losses of this micro-batch), ``n_normaliser`` (how many tokens or examples that sum covers) and ``metrics``:
  ``name → number`` (summed over micro-batches and ranks) or ``name → (numerator, denominator)`` (reported as
  the global ratio). The optimised loss is ``Σ loss_sum / Σ n_normaliser`` over the whole global batch, whatever
  the split over ranks and micro-batches. ``model`` is the policy (FSDP-wrapped when ``dp_shard > 1``); the extra
  modules are ``trainer.extras[name]`` (they are kept whole on every rank, gradients averaged: build them with
  the same seed on every rank).
- ``cumulative``: plain metrics also reported as running totals over the run (TRL's ``num_tokens``).
- ``state`` / ``restore``: a stage's own JSON state kept in each checkpoint (an adaptive KL coefficient, say).
- ``after_step(step, row)``: called on every rank after each optimizer step with the logged row.

:func:`token_logps` and :func:`sequence_logps` are the log-prob helpers every stage shares; with packed rows
(``positions`` (B, T) restarting at 0 at each document) the attention installed by :func:`use_document_attention`
keeps documents apart.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmhpc.align.config import AlignTrainConfig, LoRAConfig
from lmhpc.align.lora import LoRAAdapters, apply_lora, merged_weights
from lmhpc.context import StageContext
from lmhpc.exchange.load import build_model, read_weights, weights_tokenizer
from lmhpc.exchange.weights import args_to_dict, write_tokenizer_files
from lmhpc.launch.preempt import Preempted
from lmhpc.model.transformer import Attention, Transformer, count_params
from lmhpc.quantize.qlinear import nf4_base
from lmhpc.train.checkpoint import (
    _OPTIM,
    TRAIN_STATE,
    CheckpointManager,
    latest_step,
    restore_rng_state,
    step_dir,
)
from lmhpc.train.config import OptimizerConfig, ParallelConfig, TrainConfig
from lmhpc.train.metrics import MetricsFile, memory_stats
from lmhpc.train.optim import build_optimizer, lr_at, set_lr
from lmhpc.train.parallel import ParallelDims, parallelize
from lmhpc.train.stage import init_distributed, pick_device

log = logging.getLogger("lmhpc.align")

METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Any, dict[str, Any]]]


# ---------------------------------------------------------------------------------------------
# log-probs and attention


def document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       positions: torch.Tensor | None) -> torch.Tensor:
    """Causal attention of (B, H, T, D) tensors; with per-row ``positions`` (B, T) a token attends only to the
    earlier tokens of its own document (a document starts where its position is 0): packed rows never mix."""
    gqa = q.shape[1] != k.shape[1]
    if positions is None or positions.dim() == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    doc = torch.cumsum((positions == 0).to(torch.int32), dim=1)  # (B, T) document index per token
    t = positions.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    mask = (doc[:, :, None] == doc[:, None, :]) & causal  # (B, Tq, Tk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None].to(q.device), enable_gqa=gqa)


def use_document_attention(model: nn.Module) -> None:
    """Make every attention module of ``model`` use :func:`document_attention` (swapped per module, as context
    parallelism swaps it; the model's code is unchanged)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = document_attention


def packed_positions(lengths: list[int], total: int) -> torch.Tensor:
    """Positions (total,) of documents of ``lengths`` laid end to end, each from 0; the tail (padding) counts on
    as one more document."""
    out = torch.zeros(total, dtype=torch.long)
    start = 0
    for n in [*lengths, total - sum(lengths)]:
        out[start:start + n] = torch.arange(n)
        start += n
    return out


def logps_from_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under ``logits`` (…, V) for each target id (…), in float32."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logps(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T-1): log-prob of each next token ``tokens[:, t+1]`` given ``tokens[:, :t+1]``. ``positions``
    (B, T): per-row positions of packed rows (see :func:`document_attention`)."""
    logits = model(tokens, positions)
    return logps_from_logits(logits[:, :-1], tokens[:, 1:])


def sequence_logps(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None = None,
                   average: bool = False) -> torch.Tensor:
    """(B,): the summed (``average``: mean) log-prob of the next tokens where ``mask`` (B, T-1) is true
    (``mask[:, t]`` selects ``tokens[:, t+1]``, e.g. the completion tokens)."""
    mask = mask.to(torch.float32)
    total = (token_logps(model, tokens, positions) * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1.0) if average else total


# ---------------------------------------------------------------------------------------------
# data slots


@dataclass(frozen=True)
class BatchSlot:
    """One rank's micro-batch of one optimizer step: which step, which micro-batch, which rank."""

    step: int
    micro: int
    micro_batches: int  # per rank per step
    micro_batch_size: int
    dp_rank: int
    dp_size: int
    seed: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.micro_batches * self.dp_size

    def positions(self) -> range:
        """Positions of this slot's examples in the stream of examples of the whole run."""
        first = self.step * self.global_batch_size + (self.dp_rank * self.micro_batches + self.micro) \
            * self.micro_batch_size
        return range(first, first + self.micro_batch_size)

    def indices(self, n_records: int) -> list[int]:
        """Record indices of this slot: the run walks epochs, each a permutation of ``range(n_records)`` seeded
        by (seed, epoch)."""
        if n_records < 1:
            raise ValueError("no records to draw batches from")
        out = []
        cache: dict[int, np.ndarray] = {}
        for p in self.positions():
            epoch, i = divmod(p, n_records)
            if epoch not in cache:
                cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n_records)
            out.append(int(cache[epoch][i]))
        return out

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """A generator seeded by (seed, step, rank, micro): the same draws after a resume."""
        g = torch.Generator(device=device)
        g.manual_seed(int(np.random.SeedSequence([self.seed, self.step, self.dp_rank, self.micro])
                          .generate_state(1, np.uint64)[0] >> 1))
        return g


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


# ---------------------------------------------------------------------------------------------
# process group


@contextlib.contextmanager
def distributed(ctx: StageContext, cfg: AlignTrainConfig) -> Iterator[torch.device]:
    """Pick this rank's device and join the process group (left again at the end if this call created it)."""
    device = pick_device(cfg.device, ctx.local_rank)
    created = init_distributed(ctx.rank, ctx.world_size, device)
    try:
        yield device
    finally:
        if created:
            dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.tolist()


# ---------------------------------------------------------------------------------------------
# checkpoints


class AlignCheckpoints(CheckpointManager):
    """Pretrain's step folders, holding besides the policy (``model``, what ``lmhpc.exchange`` reads) the extra
    modules and LoRA adapters (``extra``) and their optimizer. With LoRA the saved ``model`` is the merged one
    (with an NF4 base: each NF4 layer saved as ``<name>.weight``, its dequantized weight plus ``B A``, never its
    codes), and a resume leaves the frozen base as built from the starting model (an NF4 base quantized again,
    deterministically, to the same codes) and restores only the adapters, extras and their optimizer."""

    def __init__(self, folder: Path, policy: nn.Module, policy_opt: torch.optim.Optimizer | None,
                 extras: nn.Module, extras_opt: torch.optim.Optimizer | None, lora: LoRAAdapters | None,
                 keep_last: int) -> None:
        super().__init__(folder, [policy], [policy_opt] if policy_opt else [], keep_last, async_save=False)
        self.policy, self.policy_opt = policy, policy_opt
        self.extras, self.extras_opt = extras, extras_opt
        self.lora = lora

    def _state_dict(self, for_load: bool = False) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if not (for_load and self.lora is not None):
            state["model"] = get_model_state_dict(self.policy)
        if self.policy_opt is not None:
            state["optim"] = get_optimizer_state_dict(self.policy, self.policy_opt, options=_OPTIM)
        if self.extras_opt is not None:
            state["extra"] = get_model_state_dict(self.extras)
            state["extra_optim"] = get_optimizer_state_dict(self.extras, self.extras_opt, options=_OPTIM)
        return state

    def save(self, step: int, train_state: dict[str, Any], synchronous: bool = True) -> Path:
        with merged_weights(self.lora) if self.lora is not None else contextlib.nullcontext():
            return super().save(step, train_state, synchronous=True)

    def load(self, step: int) -> dict[str, Any]:
        from lmhpc.fsutil import read_json

        path = step_dir(self.folder, step)
        state = self._state_dict(for_load=True)
        dcp.load(state, checkpoint_id=str(path))
        if "model" in state:
            set_model_state_dict(self.policy, state["model"])
        if self.policy_opt is not None:
            set_optimizer_state_dict(self.policy, self.policy_opt, state["optim"], options=_OPTIM)
        if self.extras_opt is not None:
            set_model_state_dict(self.extras, state["extra"])
            set_optimizer_state_dict(self.extras, self.extras_opt, state["extra_optim"], options=_OPTIM)
        rng_file = path / f"rng-rank{self.rank:05d}.pt"
        if not rng_file.exists():
            rng_file = path / "rng-rank00000.pt"
        restore_rng_state(rng_file)
        if self.rank == 0:
            log.info("resumed from checkpoint step %d (%s)", step, path)
        return read_json(path / TRAIN_STATE)


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class _StepResult:
    loss: float
    grad_norm: float
    normaliser: float
    metrics: dict[str, float]


class AlignTrainer:
    """The policy (with its LoRA adapters and extra modules), its optimizers and the loop; see the module doc."""

    def __init__(self, ctx: StageContext, cfg: AlignTrainConfig, source: Path, device: torch.device,
                 lora: LoRAConfig | None = None, extra_modules: dict[str, nn.Module] | None = None) -> None:
        self.ctx, self.cfg, self.device, self.source = ctx, cfg, device, Path(source)
        self.rank, self.world = _world()
        self.seed = cfg.seed if cfg.seed >= 0 else ctx.cfg.run.seed
        self.dims = ParallelDims.build(ParallelConfig(dp_shard=cfg.dp_shard), self.world, self.rank, device.type)
        self.dp_size = self.dims.cfg.dp
        self.dp_rank = self.dims.dp_rank
        if cfg.global_batch_size % (cfg.micro_batch_size * self.dp_size):
            raise ValueError(f"{ctx.stage}.train.global_batch_size={cfg.global_batch_size} is not a multiple of "
                             f"micro_batch_size × dp = {cfg.micro_batch_size} × {self.dp_size}")
        self.micro_batches = cfg.grad_accum(self.dp_size)

        weights = read_weights(self.source)
        self.args = weights.args
        self.tokenizer = weights_tokenizer(weights)
        self.tokenizer_file = self._keep_tokenizer(weights.tokenizer_files)
        torch.manual_seed(self.seed)
        model = build_model(weights)
        del weights
        use_document_attention(model)
        self.n_params = count_params(model)
        self.lora: LoRAAdapters | None = None
        if lora is not None and lora.enabled:
            if "output" in lora.targets and self.args.tie_embeddings:
                raise ValueError(f"{ctx.stage}.lora.targets: 'output' shares its weight with the embedding in this "
                                 "model (tie_embeddings); merging an adapter into it would change the embedding too")
            if lora.nf4:  # QLoRA: the block linears become frozen NF4, quantized from the starting model (every
                nf4_base(model)  # start: the same codes, so a resume needs only the adapters and their optimizer)
            self.lora = apply_lora(model, lora, generator_seed=self.seed)
        self.extras = nn.ModuleDict(dict(extra_modules or {}))
        if self.lora is not None:
            self.extras["lora"] = self.lora
        train = TrainConfig(seq_len=cfg.max_len, precision=cfg.precision, device=cfg.device)
        self.model = parallelize(model, self.dims, train, device)
        self.model.train()
        self.extras.to(device).train()
        self.sharded = self.dims.cfg.dp_shard > 1
        self._use_autocast = cfg.precision == "bf16" and not self.sharded

        self.opt_cfg = OptimizerConfig(lr=cfg.lr, min_lr_ratio=cfg.min_lr_ratio, warmup_steps=cfg.warmup_steps,
                                       schedule=cfg.schedule, betas=list(cfg.betas), eps=cfg.eps,
                                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)
        self.policy_params = [p for p in self.model.parameters() if p.requires_grad]
        self.extra_params = [p for p in self.extras.parameters() if p.requires_grad]
        self.policy_opt = build_optimizer(self.model, self.args, self.opt_cfg) if self.policy_params else None
        groups = [{"params": [p for p in self.extra_params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in self.extra_params if p.ndim < 2], "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]  # an empty group breaks the flattened optimizer state dict
        self.extras_opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                            foreach=True) if groups else None
        self.optimizers = [o for o in (self.policy_opt, self.extras_opt) if o is not None]
        if not self.optimizers:
            raise ValueError(f"stage '{ctx.stage}': nothing to train (no parameter requires a gradient)")
        # from here the global generator drives dropout (LoRA's): a stream of its own per rank
        torch.manual_seed(int(np.random.SeedSequence([self.seed, self.rank]).generate_state(1, np.uint64)[0] >> 1))
        self.checkpoints = AlignCheckpoints(ctx.stage_dir / "checkpoints", self.model, self.policy_opt, self.extras,
                                            self.extras_opt, self.lora, cfg.keep_last)

    # -- models -----------------------------------------------------------------------------------
    def _keep_tokenizer(self, files: dict[str, bytes]) -> str:
        """The tokenizer files in ``<stage>/tokenizer/`` (the train state names them, so the checkpoints open
        with their tokenizer wherever the starting model came from)."""
        folder = self.ctx.stage_dir / TOKENIZER_DIR
        if self.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            write_tokenizer_files(files, folder)
        name = "tokenizer.model" if "tokenizer.model" in files else "tokenizer.json"
        return str(folder / name)

    def load_frozen(self, path: str | Path | None = None, dtype: torch.dtype = torch.float32) -> Transformer:
        """A frozen second model (default: the starting model again) on this rank's device, in eval mode, whole on
        every rank (no gradient, no optimizer, not checkpointed)."""
        weights = read_weights(Path(path) if path is not None else self.source)
        model = build_model(weights).to(self.device)
        for param in model.parameters():
            param.requires_grad_(False)
            param.data = param.data.to(dtype)
        use_document_attention(model)
        return model.eval()

    def autocast(self):
        """bf16 autocast when ``precision: bf16`` without FSDP2 (FSDP2 casts itself): for a stage's own
        forward passes outside ``loss_fn`` (rollouts, reference log-probs)."""
        if self._use_autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def slot(self, step: int, micro: int) -> BatchSlot:
        return BatchSlot(step, micro, self.micro_batches, self.cfg.micro_batch_size, self.dp_rank, self.dp_size,
                         self.seed)

    # -- one step ---------------------------------------------------------------------------------
    def _grad_norm(self) -> torch.Tensor:
        def norm(params: list[torch.Tensor]) -> torch.Tensor:
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                return torch.zeros((), device=self.device)
            n = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
            return n.full_tensor() if hasattr(n, "full_tensor") else n

        return torch.hypot(norm(self.policy_params), norm(self.extra_params).to(self.device))

    def _step(self, step: int, batch_fn: Callable[[BatchSlot], Any], loss_fn: LossFn) -> _StepResult:
        loss_total, norm_total = 0.0, 0.0
        sums: dict[str, float] = {}
        ratios: dict[str, list[float]] = {}
        keys: tuple[str, ...] | None = None
        for micro in range(self.micro_batches):
            batch = to_device(batch_fn(self.slot(step, micro)), self.device)
            with self.autocast():
                loss_sum, n, metrics = loss_fn(self.model, batch)
            loss_sum.backward()
            loss_total += float(loss_sum.detach())
            norm_total += float(n)
            if keys is None:
                keys = tuple(sorted(metrics))
            elif tuple(sorted(metrics)) != keys:
                raise RuntimeError(f"loss_fn returned metrics {sorted(metrics)}, then {list(keys)}: keep the keys")
            for k, v in metrics.items():
                if isinstance(v, tuple):
                    num, den = ratios.setdefault(k, [0.0, 0.0])
                    ratios[k] = [num + float(v[0]), den + float(v[1])]
                else:
                    sums[k] = sums.get(k, 0.0) + float(v)
        names_s, names_r = sorted(sums), sorted(ratios)
        flat = [norm_total, loss_total] + [sums[k] for k in names_s] + [x for k in names_r for x in ratios[k]]
        total = _all_reduce(flat)
        global_norm = total[0] if total[0] > 0 else 1.0
        # gradients: FSDP2 averaged the policy's over the ranks; the whole-on-every-rank extras are summed here
        policy_scale = (self.world if self.sharded else 1.0) / global_norm
        with torch.no_grad():
            for p in self.policy_params:
                if p.grad is not None:
                    p.grad.mul_(policy_scale)
            for p in self.extra_params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                if self.world > 1:
                    dist.all_reduce(p.grad)
                p.grad.mul_(1.0 / global_norm)
        grad_norm = self._grad_norm()
        if self.cfg.grad_clip > 0:
            for group in (self.policy_params, self.extra_params):
                if group:
                    torch.nn.utils.clip_grads_with_norm_(group, self.cfg.grad_clip, grad_norm, foreach=True)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        metrics = {k: total[2 + i] for i, k in enumerate(names_s)}
        base = 2 + len(names_s)
        for i, k in enumerate(names_r):
            num, den = total[base + 2 * i], total[base + 2 * i + 1]
            metrics[k] = num / den if den else float("nan")
        return _StepResult(total[1] / global_norm, float(grad_norm), total[0], metrics)

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, batch_fn: Callable[[BatchSlot], Any], loss_fn: LossFn, cumulative: tuple[str, ...] = (),
            state: Callable[[], dict[str, Any]] | None = None, restore: Callable[[dict[str, Any]], None] | None = None,
            after_step: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Train from the newest checkpoint (or step 0) to ``cfg.steps``; returns the stats."""
        t_start = time.time()
        cfg, ctx = self.cfg, self.ctx
        ckpt_dir = self.checkpoints.folder
        resume = [latest_step(ckpt_dir) if self.rank == 0 else None]
        if dist.is_initialized() and self.world > 1:
            dist.broadcast_object_list(resume, src=0)
        step = 0
        totals = {k: 0.0 for k in cumulative}
        if resume[0] is not None:
            t_load = time.perf_counter()
            saved = self.checkpoints.load(resume[0])
            step = int(saved["step"])
            ctx.event("restored", step=step, seconds=round(time.perf_counter() - t_load, 3))
            totals.update(saved.get("totals", {}))
            if restore is not None:
                restore(saved.get("stage_state", {}))
        start_step, last_saved = step, (step if resume[0] is not None else -1)

        def train_state() -> dict[str, Any]:
            return {"step": step, "seed": self.seed, "world_size": self.world, "stage": ctx.stage,
                    "global_batch": cfg.global_batch_size, "totals": dict(totals),
                    "stage_state": state() if state is not None else {},
                    "model_args": args_to_dict(self.args), "tokenizer": self.tokenizer_file,
                    "init_from": str(self.source), "lora": self.lora is not None}

        metrics_file = MetricsFile(ctx.stage_dir / METRICS_FILE, step) if self.rank == 0 else None
        log.info("%s: %s params (%s trained), dp %d × %d micro-batches × %d, steps %d→%d on %s", ctx.stage,
                 f"{self.n_params:,}", f"{sum(p.numel() for p in self.policy_params + self.extra_params):,}",
                 self.dp_size, self.micro_batches, cfg.micro_batch_size, step, cfg.steps, self.device)
        first_loss, last = None, {}
        step_seconds = 0.0
        try:
            while step < cfg.steps:
                (stop,) = _all_reduce([float(ctx.should_stop())], op="max")
                if stop:
                    if step == 0:  # nothing trained: the next attempt starts over, exactly as this one did
                        # (a step-0 save would not be neutral: DCP fills an empty Adam state with a zero-lr step)
                        raise Preempted("preemption signal before the first step: nothing to save")
                    if last_saved != step:
                        self.checkpoints.save(step, train_state())
                    raise Preempted(f"preemption signal: checkpoint at step {step} saved")
                lr = lr_at(step, cfg.steps, self.opt_cfg)
                set_lr(self.optimizers, lr)
                t0 = time.perf_counter()
                result = self._step(step, batch_fn, loss_fn)
                seconds = time.perf_counter() - t0
                step_seconds += seconds
                step += 1
                for k in cumulative:
                    totals[k] += result.metrics.get(k, 0.0)
                row = {"step": step, "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
                       **result.metrics, **totals, "step_seconds": seconds}
                first_loss = result.loss if first_loss is None else first_loss
                last = row
                if step % cfg.log_every == 0 or step == cfg.steps:
                    if metrics_file is not None:
                        metrics_file.write(row)
                        ctx.tracker.log(row, step=step)
                        log.info("step %d/%d | loss %.4f | grad norm %.3g | lr %.2e", step, cfg.steps, result.loss,
                                 result.grad_norm, lr)
                if after_step is not None:
                    after_step(step, row)
                if cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 and step < cfg.steps:
                    self.checkpoints.save(step, train_state())
                    last_saved = step
            if last_saved != step:
                self.checkpoints.save(step, train_state())
                last_saved = step
        finally:
            if metrics_file is not None:
                metrics_file.close()
        done = step - start_step
        return {
            "steps": step,
            "resumed_from_step": start_step or None,
            "first_loss": first_loss,
            "final_loss": last.get("loss"),
            "final_metrics": {k: v for k, v in last.items() if k not in ("step", "step_seconds")},
            "params": self.n_params,
            "trained_params": sum(p.numel() for p in self.policy_params + self.extra_params),
            "lora": self.lora is not None,
            "world_size": self.world,
            "global_batch_size": cfg.global_batch_size,
            "micro_batches_per_rank": self.micro_batches,
            "device": str(self.device),
            "precision": cfg.precision,
            "mean_step_seconds": step_seconds / done if done else None,
            "checkpoints_saved": self.checkpoints.saves,
            "last_checkpoint": str(step_dir(ckpt_dir, last_saved)) if last_saved >= 0 else None,
            "init_from": str(self.source),
            "attempt_seconds": round(time.time() - t_start, 3),
            "memory": memory_stats(self.device),
        }
