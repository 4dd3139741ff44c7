"""One rank of a 2-rank FSDP2 build of a model, for the meta-device memory test (not a test module).

Run as ``python -m tests.train.meta_build_probe meta|eager DIM LAYERS`` with RANK / WORLD_SIZE /
MASTER_ADDR / MASTER_PORT set. Prints one JSON line: the growth of this process's peak resident memory
(VmHWM, reset just before the build) over its resident memory before the build, the model's bytes in
fp32, and (rank 0) a digest of the whole model's values gathered after the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    from lmhpc.model.transformer import ModelArgs, Transformer, count_params
    from lmhpc.train.config import ParallelConfig, TrainConfig
    from lmhpc.train.materialize import materialize, meta_model
    from lmhpc.train.parallel import ParallelDims, parallelize

    mode, dim, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dims = ParallelDims.build(ParallelConfig(dp_shard=world), world, rank, "cpu")
    device = torch.device("cpu")

    def build(args: ModelArgs):
        if mode == "meta":
            return parallelize(meta_model(args), dims, TrainConfig(device="cpu"), device,
                               lambda m: materialize(m, device, seed=1234))
        return parallelize(Transformer(args, init_seed=1234), dims, TrainConfig(device="cpu"), device)

    build(ModelArgs(vocab_size=256, dim=64, n_layers=2, n_heads=8, max_seq_len=64))  # first-use costs (imports)
    args = ModelArgs(vocab_size=256, dim=dim, n_layers=layers, n_heads=8, max_seq_len=64)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    before = _status("VmRSS")
    model = build(args)
    peak = _status("VmHWM") - before
    local = sum(p.to_local().numel() for p in model.parameters()) * 4
    digest = hashlib.sha256()
    for name, p in model.named_parameters():  # after the measurement: gathering needs whole tensors
        full = p.detach().full_tensor()
        if rank == 0:
            digest.update(name.encode() + full.numpy().tobytes())
    print(json.dumps({"rank": rank, "mode": mode, "peak_growth_bytes": peak, "model_bytes": count_params(model) * 4,
                      "local_bytes": local, "digest": digest.hexdigest() if rank == 0 else None}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
