"""Check the sizing model (lmhpc/sizing.py) against measurements on this machine, then size a real cluster.

Each formula is compared with what the code actually does at small scale on CPU:

- parameters: the formula vs the model's tensors;
- activations saved for backward (fp32 and bf16): the formula vs the bytes autograd actually saves (counted
  with saved-tensor hooks, parameters excluded), including the loss's logits;
- training state per rank under FSDP2 (2 ranks): fp32 parameters + gradients + AdamW moments, formula vs the
  local shards' bytes after one optimizer step;
- peak memory of a training step: formula (state + activations) vs the growth of the process's peak RSS;
- checkpoint size: formula vs the bytes the checkpoint manager wrote; save time: size ÷ a measured write
  bandwidth of the same filesystem vs the measured save;
- throughput: tokens/s of a second model predicted from the FLOP/s measured on a first one (the MFU carried
  over), vs its measured tokens/s.

Then the sizing table for 1 TB of text and a 70B model on 512 GPUs (docs/sizing.md).

    .venv/bin/python bench/sizing.py            # ~2 minutes on 2 cores; writes bench/results/sizing.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lmhpc.model.args import ModelArgs  # noqa: E402
from lmhpc.model.transformer import Transformer, count_params, flops_per_token  # noqa: E402
from lmhpc.sizing import (  # noqa: E402
    ClusterPlan,
    Layout,
    activation_bytes_per_token,
    checkpoint_bytes,
    param_count,
    save_seconds,
    size,
    tokens_per_second,
    training_memory,
)

TOLERANCE = 0.20


def row(name: str, predicted: float, measured: float, unit: str, **extra) -> dict:
    ratio = predicted / measured if measured else float("nan")
    return {"check": name, "predicted": predicted, "measured": measured, "unit": unit,
            "predicted_over_measured": round(ratio, 4), "within_20pct": abs(ratio - 1) <= TOLERANCE, **extra}


def saved_activation_bytes(model: Transformer, tokens: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of the tensors autograd saves for backward in one forward + loss (parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage().data_ptr()
        if key not in skip:
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
    return sum(seen.values())


def check_params() -> list[dict]:
    out = []
    for args in (ModelArgs(vocab_size=8000, dim=192, n_layers=4, n_heads=6, n_kv_heads=3),
                 ModelArgs(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=2, tie_embeddings=True)):
        out.append(row(f"params dim{args.dim}", param_count(args), count_params(Transformer(args)), "params"))
    return out


def check_activations() -> list[dict]:
    out = []
    torch.manual_seed(0)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for args in (ModelArgs(vocab_size=8000, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=512),
                     ModelArgs(vocab_size=16000, dim=512, n_layers=6, n_heads=8, n_kv_heads=2, max_seq_len=512)):
            model = Transformer(args).to(dtype)
            batch, seq = 2, 256
            tokens = torch.randint(0, args.vocab_size, (batch, seq + 1))
            measured = saved_activation_bytes(model, tokens, dtype)
            per = activation_bytes_per_token(args, precision)
            predicted = batch * seq * (args.n_layers * per["block"] + per["head"] + per["loss"])
            out.append(row(f"activations {precision} dim{args.dim}", predicted, measured, "bytes"))
    return out


def _fsdp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    args = ModelArgs(vocab_size=8000, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256)
    model = Transformer(args)
    for layer in model.layers.values():
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, args.vocab_size, (2, 129))
    loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    opt.step()
    local = 0
    for p in model.parameters():
        local += p.to_local().nbytes + p.grad.to_local().nbytes
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                local += (v.to_local() if hasattr(v, "to_local") else v).nbytes
    queue.put((rank, local))
    dist.barrier()
    dist.destroy_process_group()


def check_fsdp_state() -> list[dict]:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fsdp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    measured = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    args = ModelArgs(vocab_size=8000, dim=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256)
    predicted = training_memory(args, 128, 2, Layout(dp_shard=2), "fp32")["state_bytes"]
    return [row("training state per rank, FSDP2 2 ranks", predicted, max(measured.values()), "bytes")]


def _peak_rss_child(conn) -> None:
    torch.set_num_threads(2)
    args = ModelArgs(vocab_size=32000, dim=768, n_layers=8, n_heads=12, n_kv_heads=4, max_seq_len=512)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, args.vocab_size, (4, 513))
    for _ in range(2):
        loss = F.cross_entropy(model(tokens[:, :-1]).float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    conn.send(peak - base)


def check_peak_memory() -> list[dict]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_peak_rss_child, args=(child,))
    p.start()
    measured = parent.recv()
    p.join()
    args = ModelArgs(vocab_size=32000, dim=768, n_layers=8, n_heads=12, n_kv_heads=4, max_seq_len=512)
    mem = training_memory(args, 512, 4, Layout(), "fp32")
    return [row("peak RSS growth of a training step (1 rank, fp32)", mem["total_bytes"], measured, "bytes",
                params=param_count(args))]


def write_bandwidth(folder: Path, nbytes: int = 256 * 2**20) -> float:
    """Bytes/s of writing one file with fsync on this filesystem."""
    data = os.urandom(2**20) * (nbytes // 2**20)
    path = folder / "bandwidth.bin"
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        best = max(best, nbytes / (time.perf_counter() - t0))
        path.unlink()
    return best


def _save_times(args: ModelArgs, folder: Path) -> tuple[float, int]:
    """Fastest of three synchronous saves of a model + AdamW state, and the bytes written."""
    from lmhpc.train.checkpoint import CheckpointManager

    torch.manual_seed(0)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, args.vocab_size, (2, 65))
    F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()).backward()
    opt.step()
    manager = CheckpointManager(folder, [model], [opt], keep_last=3, async_save=False)
    times = []
    for step in (1, 2, 3):
        t0 = time.perf_counter()
        saved = manager.save(step, {"step": step}, synchronous=True)
        times.append(time.perf_counter() - t0)
    return min(times), sum(f.stat().st_size for f in Path(saved).rglob("*") if f.is_file())


def check_checkpoint(rounds: int = 3) -> list[dict]:
    """Save time of a larger checkpoint predicted from the serialisation rate of a smaller one measured just
    before it, in ``rounds`` alternating rounds (the rate of this shared machine's disk swings 3x between
    minutes, and within a round both sizes see the same); medians over the rounds."""
    small = ModelArgs(vocab_size=16000, dim=384, n_layers=4, n_heads=6, n_kv_heads=3, max_seq_len=256)
    large = ModelArgs(vocab_size=16000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=256)
    predicted, measured, rates = [], [], []
    with tempfile.TemporaryDirectory(dir=ROOT / "runs" if (ROOT / "runs").is_dir() else None) as tmp:
        folder = Path(tmp)
        bandwidth = write_bandwidth(folder)
        for r in range(rounds):
            small_s, small_bytes = _save_times(small, folder / f"small-{r}")
            large_s, large_bytes = _save_times(large, folder / f"large-{r}")
            rank_rate = small_bytes / small_s  # one rank's serialisation rate, measured on the small model
            rates.append(rank_rate)
            predicted.append(save_seconds(checkpoint_bytes(large), 1, bandwidth, rank_rate))
            measured.append(large_s)
    return [row("checkpoint bytes", checkpoint_bytes(large), large_bytes, "bytes"),
            row("checkpoint save seconds (rate of a smaller checkpoint carried over)", statistics.median(predicted),
                statistics.median(measured), "s", fs_bandwidth_mb_s=round(bandwidth / 2**20, 1),
                rank_rate_mb_s=[round(r / 2**20, 1) for r in rates],
                rounds=[{"predicted": round(p, 3), "measured": round(m, 3)} for p, m in zip(predicted, measured)])]


def _train_step(args: ModelArgs, seq: int, batch: int):
    torch.manual_seed(0)
    model = Transformer(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, args.vocab_size, (batch, seq + 1))

    def step() -> None:
        loss = F.cross_entropy(model(tokens[:, :-1]).float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()

    step()  # warm-up
    return step


def check_throughput(rounds: int = 3, steps: int = 3) -> list[dict]:
    """One torch thread (its CPU time is the work done, not spin-waiting on a busy machine); the two models are
    measured in alternation and the median tokens per CPU-second of each is kept, so drifting load from other
    processes falls on both."""
    torch.set_num_threads(1)
    seq, batch = 256, 4
    a = ModelArgs(vocab_size=8000, dim=384, n_layers=6, n_heads=6, n_kv_heads=3, max_seq_len=seq)
    b = ModelArgs(vocab_size=8000, dim=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=seq)
    steps_of = {"a": _train_step(a, seq, batch), "b": _train_step(b, seq, batch)}
    rates: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(rounds):
        for name, step in steps_of.items():
            t0 = time.process_time()
            for _ in range(steps):
                step()
            rates[name].append(steps * batch * seq / (time.process_time() - t0))
    tps_a, tps_b = statistics.median(rates["a"]), statistics.median(rates["b"])
    achieved = tps_a * flops_per_token(a, seq)  # FLOP/s of one core: "peak × MFU" carried over
    predicted = tokens_per_second(b, seq, 1, achieved, 1.0)
    torch.set_num_threads(2)
    return [row("tokens/s of model B from model A's FLOP/s (per CPU-second, 1 thread)", predicted, tps_b,
                "tokens/s", achieved_gflops=round(achieved / 1e9, 2))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sizing.json"))
    args = parser.parse_args()
    t0 = time.time()
    checks = []
    for fn in (check_params, check_activations, check_fsdp_state, check_peak_memory, check_checkpoint,
               check_throughput):
        rows = fn()
        for r in rows:
            print(f"{r['check']:<72} predicted {r['predicted']:>14.4g}  measured {r['measured']:>14.4g}  "
                  f"ratio {r['predicted_over_measured']:.3f}  {'ok' if r['within_20pct'] else 'OUT'}")
        checks += rows
    dedup = json.loads((ROOT / "bench" / "results" / "dedup.json").read_text())["lmhpc"]["2"]["memory"]
    tokenize = json.loads((ROOT / "bench" / "results" / "tokenize.json").read_text())["results"]["lmhpc"]
    plan = ClusterPlan(tokenize_bytes_per_cpu_s=tokenize["mb_per_cpu_s"] * 1e6)
    table = {"no_recompute": size(ClusterPlan(recompute="none", tokenize_bytes_per_cpu_s=plan.tokenize_bytes_per_cpu_s),
                                  dedup),
             "full_recompute": size(plan, dedup)}
    result = {"benchmark": "sizing", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": ".venv/bin/python bench/sizing.py", "tolerance": TOLERANCE, "checks": checks,
              "all_within_20pct": all(c["within_20pct"] for c in checks), "cluster_70b_1tb": table,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "loadavg": os.getloadavg(), "torch": torch.__version__},
              "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out} in {result['seconds']} s")


if __name__ == "__main__":
    main()
