"""One rank of a tiny parallel model that saves a DCP checkpoint the way the pretrain stage does; rank 0 also
saves the whole model as it was in memory (safetensors), for the consolidation test to compare against.

``python -m tests.exchange.dcp_worker LAYOUT OUT`` with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lmhpc.exchange.weights import args_to_dict, model_state
from lmhpc.model.args import ModelArgs, MoEArgs
from lmhpc.model.transformer import Transformer
from lmhpc.train.checkpoint import CheckpointManager
from lmhpc.train.config import OptimizerConfig, ParallelConfig, TrainConfig
from lmhpc.train.optim import build_optimizer
from lmhpc.train.parallel import ParallelDims, cut_stage, parallelize, stage_ids

LAYOUTS = {
    "fsdp": (ParallelConfig(dp_shard=2), TrainConfig(device="cpu", activation_checkpointing="full"), {}),
    "tp": (ParallelConfig(tp=2, dp_shard=1), TrainConfig(device="cpu", seq_len=32), {}),
    "pp": (ParallelConfig(pp=2, dp_shard=1), TrainConfig(device="cpu"), {}),
    "ep": (ParallelConfig(dp_shard=2, ep=2), TrainConfig(device="cpu"), {"moe": MoEArgs(num_experts=4, top_k=2)}),
}


def main(layout: str, out: Path) -> None:
    parallel, train, extra = LAYOUTS[layout]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dims = ParallelDims.build(parallel, world, rank, "cpu")
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=96, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64, **extra)
    model = Transformer(args)
    with torch.no_grad():  # trained-looking weights: norm gains away from 1, no two tensors alike
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model_state(model).items()}, str(out / "in_memory.safetensors"))
    if dims.size("pp") > 1:
        parts = [cut_stage(copy.deepcopy(model), dims.size("pp"), i) for i in stage_ids(dims)]
    else:
        parts = [model]
    parts = [parallelize(p, dims, train, torch.device("cpu")) for p in parts]
    optimizers = [build_optimizer(p, args, OptimizerConfig()) for p in parts]
    manager = CheckpointManager(out / "checkpoints", parts, optimizers)
    manager.save(1, {"step": 1, "data_step": 1, "model_args": args_to_dict(args)})
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
