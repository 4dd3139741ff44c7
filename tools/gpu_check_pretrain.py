"""GPU check of the pretrain stage: a ~1B Llama-style model trained for a few minutes on one GPU,
in bf16 and in fp8 (torchao float8, tensorwise), printing tokens/s and MFU of each; and, with
``--cp``, context parallel with PyTorch's ring attention (``parallel.cp_impl=dtensor``) against a
run without context parallel; with ``--ep``, expert parallel (ep=2) against the same two FSDP ranks
without it.

It runs the real stage code (``lmhpc.train.stage.run``) on synthetic tokens written as a Megatron
``.bin/.idx`` dataset, so what it measures is what a pretrain job does. MFU is against the GPU's
dense BF16 peak (also for the fp8 run, which is labelled as such).

The context-parallel check trains a small model for a few steps with cp=1 (one rank), then cp=2 with
ring attention and with all-gather-KV (two ranks), and compares the per-step losses. With one GPU
the two ranks share it over gloo (NCCL refuses two ranks on one device); with two or more GPUs they
use NCCL, one GPU each.

    python tools/gpu_check_pretrain.py                     # bf16 then fp8, 150 steps each
    python tools/gpu_check_pretrain.py --modes bf16 --steps 50 --no-compile
    python tools/gpu_check_pretrain.py --modes none --cp   # only the context-parallel check
    python tools/gpu_check_pretrain.py --modes none --ep   # only the expert-parallel check
    python tools/gpu_check_pretrain.py --out check.json    # also write the figures as JSON

Without CUDA it stops at once with exit code 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

VOCAB = 32000
EOD = 2


def model_1b(seq_len: int) -> dict[str, Any]:
    """~0.9B parameters: dim 2048, 16 layers, 16 heads (GQA 8), SwiGLU 5632, untied 32k vocabulary."""
    return {"vocab_size": VOCAB, "dim": 2048, "n_layers": 16, "n_heads": 16, "n_kv_heads": 8, "ffn_hidden": 5632,
            "max_seq_len": seq_len, "rope_theta": 500000.0}


def pretrain_section(mode: str, prefix: Path, steps: int, seq_len: int, batch: int, compile_model: bool,
                     activation_checkpointing: bool) -> dict[str, Any]:
    """The ``pretrain`` config section of one check run (``mode``: bf16 or fp8)."""
    return {
        "model": model_1b(seq_len),
        "train": {"steps": steps, "seq_len": seq_len, "micro_batch_size": batch, "device": "cuda",
                  "precision": "bf16", "fp8": mode == "fp8", "fp8_recipe": "tensorwise", "compile": compile_model,
                  "activation_checkpointing": "full" if activation_checkpointing else "none", "seed": 1},
        "optimizer": {"lr": 3e-4, "warmup_steps": min(20, steps)},
        "checkpoint": {"interval": 0, "save_final": False},
        "spike": {"policy": "off"},
        "data": {"prefixes": [str(prefix)], "eod_id": EOD},
        "metrics": {"log_every": 10},
    }


def cp_section(prefix: Path, cp: int, impl: str, precision: str, steps: int,
               rotate: str = "allgather") -> dict[str, Any]:
    """A small model on long sequences: the ``pretrain`` section of one context-parallel check run."""
    return {
        "model": {"vocab_size": VOCAB, "dim": 512, "n_layers": 4, "n_heads": 8, "n_kv_heads": 4, "ffn_hidden": 1408,
                  "max_seq_len": 4096},
        "parallel": {"cp": cp, "cp_impl": impl, "cp_rotate": rotate},
        "train": {"steps": steps, "seq_len": 4096, "micro_batch_size": 2, "device": "cuda", "precision": precision,
                  "seed": 1},
        "optimizer": {"lr": 1e-3, "warmup_steps": 2},
        "checkpoint": {"interval": 0, "save_final": False},
        "spike": {"policy": "off"},
        "data": {"prefixes": [str(prefix)], "eod_id": EOD},
        "metrics": {"log_every": 1},
    }


def run_config(section: dict[str, Any], work: Path, name: str, tasks: int = 1, gpus: int = 1):
    """A validated RunConfig for one run (``tasks`` processes; ``gpus`` per node, 0 when they share one)."""
    from lmhpc.config import RunConfig, build, validate

    cfg = build(RunConfig, {"run": {"name": name, "runs_dir": str(work / "runs"), "stages": ["pretrain"]},
                            "resources": {"pretrain": {"tasks": tasks, "gpus_per_node": gpus}},
                            "wandb": {"mode": "disabled"}, "pretrain": section})
    cfg.base_dir = str(work)
    validate(cfg)
    return cfg


def write_tokens(work: Path, tokens: int, seed: int = 0) -> Path:
    """Random documents (uniform tokens) as a Megatron dataset: throughput does not care what they say."""
    import numpy as np

    from lmhpc.train.data import write_indexed_dataset

    rng = np.random.default_rng(seed)
    doc_len = 4096
    docs = [rng.integers(3, VOCAB, size=doc_len) for _ in range(max(tokens // doc_len, 1))]
    return write_indexed_dataset(work / "data" / "random", docs, VOCAB)


def check_one(mode: str, args: argparse.Namespace, work: Path, prefix: Path) -> dict[str, Any]:
    import torch

    from lmhpc.context import StageContext
    from lmhpc.train import stage as pretrain_stage

    section = pretrain_section(mode, prefix, args.steps, args.seq_len, args.batch, not args.no_compile,
                               args.activation_checkpointing)
    cfg = run_config(section, work, f"gpu-check-{mode}")
    ctx = StageContext(cfg=cfg, stage="pretrain")
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    stats = pretrain_stage.run(ctx)
    return {"mode": mode, "tokens_per_s": stats["steady_tokens_per_s"], "mfu_pct": stats["mfu_pct"],
            "tflops": stats["steady_tflops_per_device"], "final_loss": stats["final_loss"],
            "params": stats["params"], "precision": stats["precision"],
            "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30, "seconds": round(time.time() - t0, 1)}


def worker(spec_path: str) -> int:
    """One rank of a context-parallel check run (RANK / WORLD_SIZE / LOCAL_RANK from the environment)."""
    from lmhpc.context import StageContext
    from lmhpc.train import stage as pretrain_stage

    spec = json.loads(Path(spec_path).read_text())
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg = run_config(spec["section"], Path(spec["work"]), spec["name"], tasks=world, gpus=spec["gpus"])
    ctx = StageContext(cfg=cfg, stage="pretrain", rank=rank, world_size=world,
                       local_rank=int(os.environ.get("LOCAL_RANK", rank)))
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    pretrain_stage.run(ctx)
    return 0


def launch_ranks(section: dict[str, Any], work: Path, name: str, world: int,
                 timeout_s: float = 300) -> list[float]:
    """Run one check on ``world`` local ranks; returns the per-step losses."""
    import torch

    from lmhpc.launch.local import torch_rank_envs
    from lmhpc.train.stage import METRICS_FILE

    shared = world > torch.cuda.device_count()
    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"section": section, "work": str(work), "name": name,
                                "gpus": 0 if shared else world}))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    procs = []
    for env in torch_rank_envs(world):
        env = {**os.environ, **env, "PYTHONPATH": path, "PYTHONFAULTHANDLER": "1"}
        if shared and world > 1:
            env["LMHPC_DIST_BACKEND"] = "gloo"
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)],
                                      env=env))
    try:
        codes = [proc.wait(timeout=timeout_s) for proc in procs]
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        raise RuntimeError(f"{name}: ranks still running after {timeout_s} s (killed)") from None
    if any(codes):
        raise RuntimeError(f"{name}: ranks exited with {codes}")
    lines = (work / "runs" / name / "pretrain" / METRICS_FILE).read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def compare(name: str, section: dict[str, Any], work: Path, world: int, ref: list[float], ref_name: str,
            tolerance: float) -> dict[str, Any]:
    """Run ``section`` on ``world`` ranks; its largest relative per-step loss gap to ``ref``."""
    print(f"== {name}: {len(ref)} steps against {ref_name}", flush=True)
    try:
        losses = launch_ranks(section, work, name, world)
    except RuntimeError as e:
        return {"run": name, "ref": ref_name, "ok": False, "error": str(e)}
    if not losses:
        return {"run": name, "ref": ref_name, "ok": False, "error": "no metrics were written"}
    gap = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    return {"run": name, "ref": ref_name, "ok": gap <= tolerance and len(losses) == len(ref), "max_rel_gap": gap,
            "tolerance": tolerance, "first_loss": losses[0], "last_loss": losses[-1], "ref_last_loss": ref[-1]}


TOLERANCES = {"fp32": 2e-3, "bf16": 3e-2}


def check_cp(work: Path, prefix: Path, steps: int, precisions: list[str], rotate: str) -> list[dict[str, Any]]:
    """cp=2 (ring attention; all-gather-KV) against cp=1, per precision."""
    out = []
    for precision in precisions:
        ref = launch_ranks(cp_section(prefix, 1, "auto", precision, steps), work, f"cp1-{precision}", 1)
        for impl in ("dtensor", "allgather_kv"):
            out.append(compare(f"cp2-{impl}-{precision}", cp_section(prefix, 2, impl, precision, steps, rotate),
                               work, 2, ref, "cp1", TOLERANCES[precision]))
    return out


def ep_section(prefix: Path, ep: int, precision: str, steps: int) -> dict[str, Any]:
    """An 8-expert top-2 MoE model on 2 FSDP ranks, with its experts split over ``ep`` of them."""
    section = cp_section(prefix, 1, "auto", precision, steps)
    section["model"]["moe"] = {"num_experts": 8, "top_k": 2, "capacity_factor": 1.25}
    section["train"]["seq_len"] = 1024
    section["parallel"] = {"dp_shard": 2, "ep": ep}
    return section


def check_ep(work: Path, prefix: Path, steps: int, precisions: list[str]) -> list[dict[str, Any]]:
    """ep=2 against the same 2 FSDP ranks without expert parallel (same routing and capacity per rank)."""
    out = []
    for precision in precisions:
        ref = launch_ranks(ep_section(prefix, 1, precision, steps), work, f"fsdp2-moe-{precision}", 2)
        out.append(compare(f"ep2-{precision}", ep_section(prefix, 2, precision, steps), work, 2, ref, "fsdp2",
                           TOLERANCES[precision]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="bf16,fp8", help="bf16 and/or fp8 throughput runs; 'none' for none")
    p.add_argument("--cp", action="store_true", help="also check context parallel (ring attention) against cp=1")
    p.add_argument("--ep", action="store_true", help="also check expert parallel (ep=2) against FSDP without it")
    p.add_argument("--cp-steps", type=int, default=20, help="steps of each --cp / --ep run")
    p.add_argument("--cp-precisions", default="fp32,bf16", help="precisions of the --cp / --ep runs")
    p.add_argument("--cp-rotate", default="auto", choices=["auto", "allgather", "alltoall"],
                   help="how ring attention passes KV shards; auto: alltoall when two ranks share one GPU over "
                        "gloo (gloo's functional all-gather of CUDA tensors crashes), else allgather")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    modes = [m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "none"]
    if set(modes) - {"bf16", "fp8"}:
        print("gpu_check_pretrain: --modes takes bf16 and/or fp8", file=sys.stderr)
        return 2

    import torch

    if not torch.cuda.is_available():
        print("gpu_check_pretrain: no CUDA GPU is visible (torch.cuda.is_available() is False); this check "
              "trains a ~1B model on one GPU and cannot run on CPU. The CPU tests cover the same code "
              "with tiny models.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    if "fp8" in modes and cap < (8, 9):
        print(f"gpu_check_pretrain: {name} (compute capability {cap[0]}.{cap[1]}) has no FP8 tensor cores; "
              "skipping the fp8 run", file=sys.stderr)
        modes = [m for m in modes if m != "fp8"]

    import torch.distributed as dist

    results, cp_results, ep_results = [], [], []
    with tempfile.TemporaryDirectory(prefix="lmhpc-gpu-check-") as tmp:
        work = Path(tmp)
        prefix = write_tokens(work, tokens=max(args.steps * args.batch * (args.seq_len + 1),
                                               args.cp_steps * 2 * 4097) + 10 * 8192)
        for mode in modes:
            print(f"== {mode}: {args.steps} steps of {args.batch} × {args.seq_len} tokens on {name}", flush=True)
            results.append(check_one(mode, args, work, prefix))
            if dist.is_initialized():
                dist.destroy_process_group()
            torch.cuda.empty_cache()
        if args.cp:
            rotate = args.cp_rotate
            if rotate == "auto":
                rotate = "alltoall" if torch.cuda.device_count() < 2 else "allgather"
            cp_results = check_cp(work, prefix, args.cp_steps, args.cp_precisions.split(","), rotate)
        if args.ep:
            ep_results = check_ep(work, prefix, args.cp_steps, args.cp_precisions.split(","))

    if results:
        print(f"\n{'mode':<6}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU %':>8}{'mem GiB':>9}{'loss':>8}")
    for r in results:
        mfu = f"{r['mfu_pct']:.1f}" if r["mfu_pct"] is not None else "n/a"
        print(f"{r['mode']:<6}{r['tokens_per_s']:>12,.0f}{r['tflops']:>10.1f}{mfu:>8}"
              f"{r['max_allocated_gib']:>9.1f}{r['final_loss']:>8.3f}")
    if results:
        print("MFU is against the dense BF16 peak of the GPU (fp8 runs included, labelled).")
    for r in cp_results + ep_results:
        if "error" in r:
            print(f"{r['run']:<24} FAILED: {r['error']}")
        else:
            print(f"{r['run']:<24} max relative loss gap to {r['ref']} {r['max_rel_gap']:.2e} (tolerance "
                  f"{r['tolerance']:.0e}) {'ok' if r['ok'] else 'TOO LARGE'}; loss {r['first_loss']:.3f} → "
                  f"{r['last_loss']:.3f} ({r['ref']} {r['ref_last_loss']:.3f})")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": name, "capability": list(cap), "torch": torch.__version__,
                                              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "results": results, "context_parallel": cp_results,
                                              "expert_parallel": ep_results}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in cp_results + ep_results) else 1


if __name__ == "__main__":
    sys.exit(main())
