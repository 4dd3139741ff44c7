"""One optimizer step: forward/backward over the micro-batches (or the pipeline schedule), gradient
norm and clipping, the loss-spike guard, the update.

Loss normalisation (torchtitan's): every rank divides its summed token losses by the number of loss
tokens in the *global* batch (all micro-batches, all data-parallel and context-parallel ranks) and
multiplies by the number of ranks whose gradients DDP/FSDP average. The gradient is then exactly
that of the global mean loss, however the batch is split over ranks and micro-batches.

Every finished step goes to a :class:`~lmhpc.train.metrics.StepLog`, which logs the step line on
rank 0 every ``pretrain.metrics.log_every`` steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lmhpc.model.moe import MoE
from lmhpc.model.transformer import flops_per_token
from lmhpc.train.config import PretrainConfig, SpikeGuardConfig
from lmhpc.train.data import IGNORE_INDEX, GlobalBatches
from lmhpc.train.metrics import StepLog, device_peak_flops
from lmhpc.train.parallel import (
    ParallelDims,
    RingContext,
    is_expert_param,
    load_balanced_chunks,
    resolve_cp_impl,
    sync_expert_grads,
)

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Too many loss spikes in a row."""


@dataclass
class SpikeGuard:
    """Decides whether a step's loss / gradient norm is a spike. Its history is part of the train state."""

    cfg: SpikeGuardConfig
    history: deque = field(default_factory=deque)
    consecutive: int = 0
    skipped: int = 0
    rollbacks: int = 0

    def is_spike(self, loss: float, grad_norm: float) -> bool:
        if self.cfg.policy == "off":
            return False
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return True
        if len(self.history) < self.cfg.min_steps:
            return False
        return loss > self.cfg.factor * statistics.median(self.history)

    def accept(self, loss: float) -> None:
        self.consecutive = 0
        self.history.append(loss)
        while len(self.history) > self.cfg.window:
            self.history.popleft()

    def reject(self, step: int, loss: float, grad_norm: float) -> None:
        self.consecutive += 1
        log.warning("step %d: loss spike (loss %.4g, grad norm %.4g, median of recent %.4g): policy %s",
                    step, loss, grad_norm, statistics.median(self.history) if self.history else float("nan"),
                    self.cfg.policy)
        if self.consecutive >= self.cfg.max_consecutive:
            raise TrainingDiverged(f"{self.consecutive} loss spikes in a row (last at step {step}, loss {loss})")

    def state(self) -> dict[str, Any]:
        return {"history": list(self.history), "consecutive": self.consecutive, "skipped": self.skipped,
                "rollbacks": self.rollbacks}

    def restore(self, state: dict[str, Any]) -> None:
        self.history = deque(state.get("history", []))
        self.consecutive = int(state.get("consecutive", 0))
        self.skipped = int(state.get("skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))


@dataclass
class StepOutcome:
    loss: float  # mean token loss of the global batch
    grad_norm: float
    loss_tokens: int
    applied: bool  # the update was applied (not a spike)
    rollback: bool = False


@dataclass
class PreparedStep:
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    global_tokens: float


def _all_reduce_world(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Runs training steps of one rank's model parts (one part unless pipeline-parallel)."""

    def __init__(self, cfg: PretrainConfig, dims: ParallelDims, model_parts: list[nn.Module],
                 optimizers: list[torch.optim.Optimizer], data: GlobalBatches, device: torch.device,
                 schedule: Any = None, has_first_stage: bool = True, has_last_stage: bool = True) -> None:
        self.cfg = cfg
        self.dims = dims
        self.parts = model_parts
        self.optimizers = optimizers
        self.data = data
        self.device = device
        self.schedule = schedule
        self.has_first = has_first_stage
        self.has_last = has_last_stage
        self.guard = SpikeGuard(cfg.spike)
        self.params = [p for part in model_parts for p in part.parameters() if p.requires_grad]
        self.expert_params = [p for p in self.params if is_expert_param(p)]
        self.other_params = [p for p in self.params if not is_expert_param(p)]
        self.moe_layers = [m for part in model_parts for m in part.modules() if isinstance(m, MoE)]
        self.loss_scale = 1.0
        cp = dims.size("cp")
        self.cp_positions = load_balanced_chunks(cfg.train.seq_len, cp, dims.coord("cp")) if cp > 1 else None
        self.ring = None
        if cp > 1 and resolve_cp_impl(dims.cfg.cp_impl, device.type, cfg.train.compile) == "dtensor":
            self.ring = RingContext(dims.submesh(("cp",)), cfg.train.seq_len, dims.cfg.cp_rotate, self.cp_positions)
        self.autocast = cfg.train.precision == "bf16" and not (dims.cfg.dp_shard > 1 or dims.cfg.cp > 1)
        args = dataclasses.replace(cfg.model, vocab_size=data.token_ids.vocab_size)
        self.step_log = StepLog(cfg.train.steps, cfg.metrics.log_every, data.global_batch * cfg.train.seq_len,
                                dims.world_size, flops_per_token(args, cfg.train.seq_len),
                                device_peak_flops(device, cfg.metrics.peak_tflops), device, enabled=dims.rank == 0)
        self._last_step_end: float | None = None

    # -- pieces ---------------------------------------------------------------------------------
    def _micro_batches(self, data_step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        t = self.cfg.train
        out = []
        for m in range(t.grad_accum):
            tokens, labels = self.data.micro_batch(data_step, m, t.micro_batch_size, self.dims.cfg.dp,
                                                   self.dims.dp_rank)
            if self.cp_positions is not None:
                tokens, labels = tokens[:, self.cp_positions], labels[:, self.cp_positions]
            out.append((tokens.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)))
        return out

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed token loss × (ranks averaged) / (global loss tokens): see the module docstring."""
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return loss * self.loss_scale

    def _autocast(self):
        if self.autocast:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        part = self.parts[0]
        if not last and hasattr(part, "no_sync"):
            return part.no_sync()
        return contextlib.nullcontext()

    def _context_parallel(self):
        """Yields the global positions of this rank's tokens (None without context parallel); with
        PyTorch's ring attention, inside its context for the forward and backward."""
        if self.ring is not None:
            return self.ring(self.device)
        return contextlib.nullcontext(self.cp_positions)

    def _set_moe_scale(self, tokens: int, chunks: int = 1) -> None:
        for layer in self.moe_layers:
            layer.loss_scale = self.loss_scale * tokens / chunks

    def forward_backward(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        """Gradients of the step into ``.grad``; returns this rank's share of the global mean loss."""
        total = 0.0
        for i, (tokens, labels) in enumerate(batches):
            last = i == len(batches) - 1
            mb_tokens = int((labels != IGNORE_INDEX).sum())
            if self.schedule is None:
                self._set_moe_scale(mb_tokens)
                with self._no_sync(last), self._autocast(), self._context_parallel() as positions:
                    logits = self.parts[0](tokens, positions)
                    loss = self.loss_fn(logits, labels)
                    loss.backward()
                total += float(loss.detach())
            else:
                self._set_moe_scale(mb_tokens, self.dims.cfg.microbatches)
                losses: list[torch.Tensor] = []
                args = (tokens,) if self.has_first else ()
                kwargs = {"target": labels, "losses": losses} if self.has_last else {}
                with self._autocast():
                    self.schedule.step(*args, **kwargs)
                total += float(sum(loss.detach() for loss in losses)) if self.has_last else 0.0
        return total

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of all gradients (across FSDP/TP shards, expert shards and pipeline stages)."""
        norm = self._norm([p.grad for p in self.other_params if p.grad is not None])
        if self.expert_params:  # DTensors of another mesh: their own norm, combined
            norm = torch.hypot(norm, self._norm([p.grad for p in self.expert_params]))
        if self.dims.size("pp") > 1:
            sq = norm.pow(2)
            dist.all_reduce(sq, group=self.dims.group(("pp",), "pp"))
            norm = sq.sqrt()
        return norm

    def _norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=True)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- the step -------------------------------------------------------------------------------
    def prepare_step(self, data_step: int, stop_requested: bool) -> tuple[PreparedStep, bool]:
        """Load this rank's micro-batches and agree, in one collective, on the global number of loss
        tokens and on whether any rank got a preemption signal (then the step is not run)."""
        batches = self._micro_batches(data_step)
        local_tokens = sum(int((lab != IGNORE_INDEX).sum()) for _, lab in batches)
        global_tokens, stops = _all_reduce_world([float(local_tokens if self.dims.counts_tokens else 0),
                                                  float(stop_requested)])
        return PreparedStep(batches, global_tokens), stops > 0

    def train_step(self, step: int, data_step: int, prepared: PreparedStep | None = None) -> StepOutcome:
        """Optimizer step ``step`` (counted from 0) on global batch ``data_step``; then the step line."""
        started = time.perf_counter()
        if prepared is None:
            prepared, _ = self.prepare_step(data_step, False)
        batches, global_tokens = prepared.batches, prepared.global_tokens
        self.loss_scale = self.dims.grad_average_size / max(global_tokens, 1.0)
        loss_share = self.forward_backward(batches)
        if self.expert_params:
            sync_expert_grads(self.expert_params, self.dims)
        norm = self.grad_norm()
        counted = self.has_last and self.dims.coord("tp") == 0
        (loss_sum,) = _all_reduce_world([loss_share if counted else 0.0])
        loss = loss_sum / self.dims.grad_average_size
        grad_norm = float(norm)
        outcome = StepOutcome(loss=loss, grad_norm=grad_norm, loss_tokens=int(global_tokens), applied=True)
        if self.guard.is_spike(loss, grad_norm):
            self.guard.reject(step, loss, grad_norm)
            outcome.applied = False
            if self.cfg.spike.policy == "rollback":
                outcome.rollback = True
                self.guard.rollbacks += 1
            else:
                self.guard.skipped += 1
        else:
            self.guard.accept(loss)
            if self.cfg.optimizer.grad_clip > 0:
                for group in (self.other_params, self.expert_params):  # one device mesh per call
                    if group:
                        torch.nn.utils.clip_grads_with_norm_(group, self.cfg.optimizer.grad_clip, norm, foreach=True)
            for opt in self.optimizers:
                opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        if not outcome.rollback:
            # a whole iteration: since the previous step ended (data, checkpoint saves), or since this
            # step began for the first step of the process
            since = self._last_step_end if self._last_step_end is not None else started
            self.step_log.step_done(step + 1, now - since, loss, grad_norm, self._base_lr(), outcome.applied)
        self._last_step_end = now
        return outcome

    def _base_lr(self) -> float:
        """The schedule's learning rate (groups carry it times their μP ``lr_mult``)."""
        group = self.optimizers[0].param_groups[0]
        return group["lr"] / group.get("lr_mult", 1.0)

    def moe_stats(self) -> dict[str, Any]:
        """Per-layer expert load and auxiliary losses since the last call, summed over all ranks."""
        n_layers = self.cfg.model.n_layers
        e = self.cfg.model.moe.num_experts
        if not e:
            return {}
        table = torch.zeros(n_layers, e + 4, dtype=torch.float64)
        for part in self.parts:
            for name, module in part.named_modules():
                if isinstance(module, MoE):
                    layer = int(name.split("layers.")[1].split(".")[0])
                    table[layer, :e] = module.tokens_per_expert.double().cpu()
                    table[layer, e] = float(module.dropped_tokens)
                    table[layer, e + 1:e + 3] = module.aux_losses.double().cpu()
                    table[layer, e + 3] = float(module.aux_count)
                    module.pop_stats()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(table)
        out: dict[str, Any] = {}
        for layer in range(n_layers):
            row = table[layer]
            total = float(row[:e].sum())
            if total == 0:
                continue
            count = max(float(row[e + 3]), 1.0)
            out[f"layer{layer}"] = {
                "load": {f"expert{i}": float(row[i]) / total for i in range(e)},
                "dropped_fraction": float(row[e]) / total,
                "load_balance_loss": float(row[e + 1]) / count,
                "z_loss": float(row[e + 2]) / count,
            }
        return out
