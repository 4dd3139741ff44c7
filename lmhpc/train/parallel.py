"""4D parallelism for the plain model of :mod:`lmhpc.model.transformer`, applied from the outside.

The device mesh has the dimensions ``pp × dp_replicate × dp_shard × cp × tp`` (those of size 1 are
left out); expert parallel splits MoE experts over ``ep`` of the data-parallel ranks. In
torchtitan's order: pipeline stages are cut first (each a copy of the model with the other stages'
layers deleted, so parameter names stay global); then, on each stage, tensor and sequence parallel →
context parallel → expert parallel → float8 → activation checkpointing → ``torch.compile`` per block
→ FSDP2 over ``dp_shard × cp`` (HSDP with ``dp_replicate``; expert weights left to EP) or DDP over
``dp_replicate``.

Context parallel comes in two implementations (``parallel.cp_impl``); in both each rank holds two of
``2 × cp`` sequence chunks (chunk ``r`` and chunk ``2cp-1-r``, so causal work is balanced):

- ``allgather_kv``, the scheme of Llama 3: each rank gathers every rank's keys and values and attends
  its queries to them under a causal mask built from global positions. Plain collectives, so it runs
  on gloo (CPU) as on NCCL; memory for the gathered keys/values grows with the whole sequence.
- ``dtensor``: PyTorch's ring attention (``torch.distributed.tensor.experimental.context_parallel``),
  which rotates key/value shards between ranks inside the flash / memory-efficient / cuDNN SDPA
  kernels. GPU only: SDPA on CPU has no DTensor sharding strategy.

``auto`` picks ``dtensor`` on CUDA and ``allgather_kv`` elsewhere or under ``torch.compile``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lmhpc.model.transformer import Attention, Transformer
from lmhpc.train.config import ParallelConfig, TrainConfig

log = logging.getLogger(__name__)

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp", "tp")


@dataclass
class ParallelDims:
    """Where this rank sits in the mesh, and the groups each kind of parallelism talks over."""

    cfg: ParallelConfig  # resolved (dp_shard known)
    rank: int = 0
    world_size: int = 1
    device_type: str = "cpu"
    mesh: object | None = None  # DeviceMesh over the dims of size > 1
    ep_mesh: object | None = None  # ("ep_replica", "ep") over the world when expert parallel
    coords: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, cfg: ParallelConfig, world_size: int, rank: int, device_type: str) -> ParallelDims:
        resolved = cfg.resolved(world_size)
        dims = cls(cfg=resolved, rank=rank, world_size=world_size, device_type=device_type)
        sizes = {name: getattr(resolved, name) for name in MESH_DIMS}
        present = [n for n in MESH_DIMS if sizes[n] > 1]
        if present:
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(device_type, tuple(sizes[n] for n in present), mesh_dim_names=tuple(present))
            dims.mesh = mesh
            dims.coords = {n: mesh.get_local_rank(n) for n in present}
            dims._flat: dict[str, object] = {}
        if resolved.ep > 1:
            # expert parallel borrows data-parallel ranks: blocks of ep consecutive ranks (within one
            # dp_shard group, as tp = pp = cp = 1) share the experts; "ep_replica" holds their copies
            from torch.distributed.device_mesh import DeviceMesh

            dims.ep_mesh = DeviceMesh(device_type, torch.arange(world_size).reshape(-1, resolved.ep),
                                      mesh_dim_names=("ep_replica", "ep"))
        return dims

    def size(self, name: str) -> int:
        return getattr(self.cfg, name)

    def coord(self, name: str) -> int:
        return self.coords.get(name, 0)

    def submesh(self, names: tuple[str, ...], flat_name: str | None = None):
        """The mesh over ``names`` (size-1 dims dropped), flattened to 1-D when ``flat_name`` is given."""
        present = tuple(n for n in names if self.size(n) > 1)
        if not present or self.mesh is None:
            return None
        if len(present) == 1:
            return self.mesh[present[0]]
        sub = self.mesh[present]
        if flat_name is None:
            return sub
        if flat_name not in self._flat:
            self._flat[flat_name] = sub._flatten(flat_name)
        return self._flat[flat_name]

    def group(self, names: tuple[str, ...], flat_name: str):
        mesh = self.submesh(names, flat_name)
        return None if mesh is None else mesh.get_group()

    # the roles of this rank -------------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        """Index of this rank's data slice (its data-parallel coordinate)."""
        return self.coord("dp_replicate") * self.size("dp_shard") + self.coord("dp_shard")

    @property
    def grad_average_size(self) -> int:
        """How many ranks' gradients are averaged (data parallel × context parallel)."""
        return self.size("dp_replicate") * self.size("dp_shard") * self.size("cp")

    @property
    def pp_rank(self) -> int:
        return self.coord("pp")

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.size("pp") - 1

    @property
    def counts_tokens(self) -> bool:
        """One rank per (dp, cp) slice counts its loss tokens: the first pipeline stage, tp rank 0."""
        return self.coord("pp") == 0 and self.coord("tp") == 0


# ---------------------------------------------------------------------------------------------
# context parallel


def load_balanced_chunks(seq_len: int, cp: int, cp_rank: int) -> torch.Tensor:
    """Positions held by ``cp_rank``: chunks ``r`` and ``2cp-1-r`` of ``2cp`` equal chunks."""
    chunks = torch.arange(seq_len).chunk(2 * cp)
    return torch.cat([chunks[cp_rank], chunks[2 * cp - 1 - cp_rank]])


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 2 (B, H, T, D); backward sums the gradients of every rank and keeps this rank's."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        ctx.local = x.shape[2]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad[:, :, ctx.rank * ctx.local:(ctx.rank + 1) * ctx.local].contiguous(), None


class AllGatherKVAttention:
    """Causal attention of this rank's queries to the keys/values of the whole sequence."""

    def __init__(self, group, cp: int, seq_len: int) -> None:
        self.group = group
        self.all_positions = torch.cat([load_balanced_chunks(seq_len, cp, r) for r in range(cp)])

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 positions: torch.Tensor | None) -> torch.Tensor:
        if positions is None:
            raise RuntimeError("context parallel attention needs the positions of the local tokens")
        k_all = _GatherSequence.apply(k, self.group)
        v_all = _GatherSequence.apply(v, self.group)
        mask = positions.to(q.device)[:, None] >= self.all_positions.to(q.device)[None, :]
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


def resolve_cp_impl(choice: str, device_type: str, compiled: bool = False) -> str:
    """``auto`` → ``dtensor`` on CUDA (without ``torch.compile``), ``allgather_kv`` otherwise;
    ``dtensor`` off CUDA is an error."""
    if choice == "auto":
        return "dtensor" if device_type == "cuda" and not compiled else "allgather_kv"
    if choice == "dtensor" and device_type != "cuda":
        raise RuntimeError(f"pretrain.parallel.cp_impl=dtensor (PyTorch ring attention) needs CUDA GPUs; this run "
                           f"is on {device_type}, where SDPA has no DTensor sharding strategy. Use "
                           "cp_impl=allgather_kv (or auto) to run context parallel here.")
    return choice


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Causal SDPA that ``context_parallel`` turns into ring attention over the cp ranks. Key/value
    heads are repeated for grouped-query attention: the ring kernels take equal head counts."""
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class RingContext:
    """Enters PyTorch's context parallel for one forward + backward and yields this rank's positions.

    The ring kernels need the sequence laid out by torch's head-tail load balancer; handing it the
    positions ``0..T-1`` as the one buffer to shard gives that layout, which must be the one the data
    was cut with (:func:`load_balanced_chunks`): it is checked on first use.
    """

    def __init__(self, mesh, seq_len: int, rotate: str, expected: torch.Tensor) -> None:
        from torch.distributed.tensor.experimental._attention import set_rotate_method

        self.mesh = mesh
        self.seq_len = seq_len
        self.expected = expected
        self.checked = False
        set_rotate_method(rotate)

    @contextlib.contextmanager
    def __call__(self, device: torch.device):
        from torch.distributed.tensor.experimental import context_parallel

        positions = torch.arange(self.seq_len, device=device)
        with context_parallel(self.mesh, buffers=[positions], buffer_seq_dims=[0], no_restore_buffers={positions}):
            if not self.checked:
                if not torch.equal(positions.cpu(), self.expected):
                    raise RuntimeError("torch's context-parallel load balancer lays the sequence out differently "
                                       f"from lmhpc's chunks ({positions.tolist()[:8]}… vs "
                                       f"{self.expected.tolist()[:8]}…); use parallel.cp_impl=allgather_kv")
                self.checked = True
            yield positions


def apply_context_parallel(model: nn.Module, dims: ParallelDims, seq_len: int, impl: str) -> None:
    if impl == "dtensor":
        attend = ring_attention
    else:
        attend = AllGatherKVAttention(dims.group(("cp",), "cp"), dims.size("cp"), seq_len)
    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = attend


# ---------------------------------------------------------------------------------------------
# expert parallel


class _AllToAll(torch.autograd.Function):
    """Rows exchanged between ranks with uneven splits; backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:  # type: ignore[override]
        ctx.group, ctx.out_splits, ctx.in_splits = group, out_splits, in_splits
        out = x.new_empty((sum(out_splits), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        back = grad.new_empty((sum(ctx.in_splits), *grad.shape[1:]))
        dist.all_to_all_single(back, grad.contiguous(), ctx.in_splits, ctx.out_splits, group=ctx.group)
        return back, None, None, None


EXPERT_WEIGHTS = ("w1", "w3", "w2")


class ExpertParallel:
    """Experts of one MoE layer split over the ``ep`` ranks: rank ``r`` owns experts
    ``[r·E/ep, (r+1)·E/ep)``. Each rank routes its own tokens (capacity as without EP), sends each
    kept row to the rank owning its expert (all-to-all), runs its experts on what it received, and
    sends the outputs back; the layer combines them as usual. Expert weights are DTensors sharded
    on dim 0 over the ``ep`` mesh, so checkpoints hold every expert once and reshard on load."""

    def __init__(self, moe: nn.Module, ep_mesh) -> None:
        from torch.distributed.tensor import DTensor, Shard

        self.moe = moe
        self.mesh = ep_mesh["ep"]
        self.group = self.mesh.get_group()
        self.ep = self.mesh.size()
        rank = self.mesh.get_local_rank()
        self.local = moe.args.num_experts // self.ep
        for name in EXPERT_WEIGHTS:
            full = getattr(moe, name).detach()
            local = full[rank * self.local:(rank + 1) * self.local].clone()
            setattr(moe, name, nn.Parameter(DTensor.from_local(local, self.mesh, [Shard(0)], run_check=False)))
        moe.experts = self

    def __call__(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        moe = self.moe
        send = torch.tensor(counts, dtype=torch.int64, device=rows.device)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # recv[r·L + j]: rows rank r sends expert j
        recv = recv.cpu().view(self.ep, self.local)
        in_splits = [sum(counts[r * self.local:(r + 1) * self.local]) for r in range(self.ep)]
        out_splits = recv.sum(1).tolist()
        received = _AllToAll.apply(rows, out_splits, in_splits, self.group)
        # received rows come grouped by source rank, then by local expert: regroup by expert
        expert_of_row = torch.arange(self.local).repeat(self.ep).repeat_interleave(recv.flatten())
        order = torch.argsort(expert_of_row, stable=True).to(rows.device)
        weights = [getattr(moe, name).to_local() for name in EXPERT_WEIGHTS]
        y_sorted = moe.run_experts(received[order], recv.sum(0).tolist(), *weights)
        y = y_sorted[torch.argsort(order)]  # back to the received order
        return _AllToAll.apply(y, in_splits, out_splits, self.group)


def apply_expert_parallel(model: nn.Module, dims: ParallelDims) -> list[nn.Parameter]:
    """Shard every MoE layer's experts over the ``ep`` ranks; returns the expert parameters."""
    from lmhpc.model.moe import MoE

    params = []
    for module in model.modules():
        if isinstance(module, MoE):
            ExpertParallel(module, dims.ep_mesh)
            params += [getattr(module, name) for name in EXPERT_WEIGHTS]
    return params


def is_expert_param(param: torch.Tensor) -> bool:
    """An expert weight sharded by expert parallel (a DTensor on the ``ep`` mesh)."""
    mesh = getattr(param, "device_mesh", None)
    return mesh is not None and mesh.mesh_dim_names == ("ep",)


def sync_expert_grads(params: list[nn.Parameter], dims: ParallelDims) -> None:
    """Expert gradients after backward: each owner summed the contributions of its ``ep`` ranks'
    tokens (through the all-to-all); summing over the copies in ``ep_replica`` and dividing by the
    data-parallel averaging size gives what FSDP gives the other parameters (the global mean)."""
    replicas = dims.ep_mesh["ep_replica"]
    scale = 1.0 / dims.grad_average_size
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        local = p.grad.to_local()
        if replicas.size() > 1:
            dist.all_reduce(local, group=replicas.get_group())
        local.mul_(scale)


# ---------------------------------------------------------------------------------------------
# tensor / sequence parallel


def apply_tensor_parallel(model: Transformer, tp_mesh, sequence_parallel: bool) -> None:
    """Megatron-style column/row splits of attention and FFN; norms and embeddings sequence-parallel."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    seq = Shard(1) if sequence_parallel else Replicate()
    root_plan = {}
    if model.tok_embeddings is not None:
        root_plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=seq)
    if model.norm is not None and sequence_parallel:
        root_plan["norm"] = SequenceParallel()
    if model.output is not None:
        root_plan["output"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
    if root_plan:
        parallelize_module(model, tp_mesh, root_plan)
    for block in model.layers.values():
        plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=seq),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=seq),
        }
        if sequence_parallel:
            plan.update({
                "mixer_norm": SequenceParallel(),
                "ffn_norm": SequenceParallel(),
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None),
                                                desired_input_layouts=(Replicate(), None, None, None)),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            })
        parallelize_module(block, tp_mesh, plan)


# ---------------------------------------------------------------------------------------------
# pipeline


def stage_ids(dims: ParallelDims) -> list[int]:
    """Pipeline stage indices of this rank: ``pp_rank + i × pp`` (looped placement)."""
    pp, v = dims.size("pp"), dims.cfg.pp_stages_per_rank
    return [dims.pp_rank + i * pp for i in range(v)]


def layers_of_stage(n_layers: int, num_stages: int, stage: int) -> list[int]:
    """Contiguous, as even as possible; earlier stages take the remainder."""
    base, extra = divmod(n_layers, num_stages)
    start = stage * base + min(stage, extra)
    return list(range(start, start + base + (1 if stage < extra else 0)))


def cut_stage(model: Transformer, num_stages: int, stage: int) -> Transformer:
    """A copy of ``model`` holding one pipeline stage: its layers, plus the embedding (first) and
    the final norm and output (last)."""
    part = copy.deepcopy(model)
    keep = {str(i) for i in layers_of_stage(model.args.n_layers, num_stages, stage)}
    for name in list(part.layers.keys()):
        if name not in keep:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
    if stage != num_stages - 1:
        part.norm = None
        part.output = None
    return part


# ---------------------------------------------------------------------------------------------
# float8, activation checkpointing, compile, data parallel


def apply_float8(model: nn.Module, train: TrainConfig, device_type: str) -> None:
    """torchao float8 training on the linear layers (not the output layer nor MoE routers)."""
    if not train.fp8_emulate:
        if device_type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"FP8 training needs a CUDA GPU with compute capability >= 8.9; this run is on "
                               f"{device_type}. Set pretrain.train.fp8_emulate=true to emulate it (slow; for tests).")
        cap = torch.cuda.get_device_capability()
        if cap < (8, 9):
            raise RuntimeError(f"FP8 training needs compute capability >= 8.9 (Ada/Hopper or newer); "
                               f"{torch.cuda.get_device_name()} has {cap[0]}.{cap[1]}")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:  # pragma: no cover - torchao is in requirements
        raise RuntimeError("FP8 training needs torchao (pip install torchao)") from e
    import dataclasses

    config = Float8LinearConfig.from_recipe_name(train.fp8_recipe)
    config = dataclasses.replace(config, emulate=train.fp8_emulate)

    def keep_high_precision(module: nn.Module, fqn: str) -> bool:
        if not isinstance(module, nn.Linear):
            return False
        small = module.in_features % 16 or module.out_features % 16
        return not (fqn.endswith(("output", "gate")) or small)

    convert_to_float8_training(model, config=config, module_filter_fn=keep_high_precision)


def apply_activation_checkpointing(model: Transformer) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.layers.items()):
        model.layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: Transformer) -> None:
    for name, block in list(model.layers.items()):
        model.layers[name] = torch.compile(block, fullgraph=True)


def apply_fsdp(model: Transformer, mesh, param_dtype: torch.dtype | None, reshard_after_forward: bool,
               ignored: set[nn.Parameter] | None = None) -> None:
    """FSDP2 per block, then the tail (norm + output) and the root; ``ignored``: parameters FSDP leaves
    alone (expert weights, sharded by expert parallel instead)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    kw = {"mesh": mesh, "mp_policy": mp, "ignored_params": ignored or None}
    for block in model.layers.values():
        fully_shard(block, reshard_after_forward=reshard_after_forward, **kw)
    tail = [m for m in (model.norm, model.output) if m is not None]
    if tail and not model.args.tie_embeddings:
        fully_shard(tail, reshard_after_forward=False, **kw)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kw)


def parallelize(model: Transformer, dims: ParallelDims, train: TrainConfig, device: torch.device,
                materialize: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """Apply TP/SP → CP → EP → float8 → AC → compile → FSDP2/HSDP or DDP to one model (or stage).

    A model built on the ``meta`` device (:mod:`lmhpc.train.materialize`) is sharded as it is and then
    handed to ``materialize``, which allocates and initialises this rank's shards (before DDP, which
    broadcasts real weights)."""
    cfg = dims.cfg
    meta = any(p.is_meta for p in model.parameters())
    if meta and materialize is None:
        raise ValueError("parallelize: a model on the meta device needs a materialize function")
    if not meta:
        model.to(device)
    if cfg.tp > 1:
        apply_tensor_parallel(model, dims.submesh(("tp",)), cfg.sequence_parallel)
    if cfg.cp > 1:
        apply_context_parallel(model, dims, train.seq_len, resolve_cp_impl(cfg.cp_impl, device.type, train.compile))
    experts = set(apply_expert_parallel(model, dims)) if cfg.ep > 1 else set()
    if train.fp8:
        apply_float8(model, train, device.type)
    if train.activation_checkpointing == "full":
        apply_activation_checkpointing(model)
    if train.compile:
        apply_compile(model)
    if cfg.dp_shard > 1 or cfg.cp > 1 or (cfg.dp_replicate > 1 and cfg.pp > 1):
        # DDP's reducer cannot follow a pipeline schedule's interleaved micro-batches: with pp > 1,
        # plain data parallelism (dp_replicate alone) is FSDP2 over the dp_replicate ranks
        shard = dims.submesh(("dp_shard", "cp"), "dp_shard_cp")
        if shard is None:
            mesh = dims.submesh(("dp_replicate",))
        elif cfg.dp_replicate > 1:
            names = ("dp_replicate", "dp_shard_cp") if cfg.dp_shard > 1 and cfg.cp > 1 else \
                tuple(n for n in ("dp_replicate", "dp_shard", "cp") if dims.size(n) > 1)
            mesh = dims.mesh[names]
        else:
            mesh = shard
        param_dtype = torch.bfloat16 if train.precision == "bf16" else None
        apply_fsdp(model, mesh, param_dtype, reshard_after_forward=cfg.pp == 1, ignored=experts)
        if meta:
            materialize(model)
        return model
    if meta:
        materialize(model)
    if cfg.dp_replicate > 1:
        from torch.nn.parallel import DistributedDataParallel

        group = dims.group(("dp_replicate",), "dp_replicate")
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, process_group=group, device_ids=ids)
    return model


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper."""
    return module.module if hasattr(module, "module") and not isinstance(module, Transformer) else module
