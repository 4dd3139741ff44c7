"""GPU check of the Megatron-Core backend against the torch-native one, on one GPU, in one run.

The same ~1B model (tools/gpu_check_pretrain.py's: dim 2048, 16 layers, GQA 16/8, SwiGLU 5632, 32k vocabulary),
the same synthetic ``.bin/.idx`` data and batch, trained by the real pretrain stage with each backend, bf16 and
FP8: tokens/s, MFU, peak memory and the loss after N steps of each; ``ratio_megatron_vs_native`` (tokens/s) for
bf16 and FP8, and FP8 over bf16 for each backend. FP8 is torchao tensorwise on the native side and Transformer
Engine (``--megatron-fp8-recipe``, delayed by default) on the megatron side.

Where Transformer Engine does not import, the megatron runs use megatron-core's local spec in bf16 only and
the JSON says so (``megatron_spec: local``, FP8 skipped).

A conversion check follows: one set of weights (written as a consolidated folder) starts a 1-step run of
each backend (``init_from``), whose step-1 losses (the same batch) must agree within bf16 tolerance; the
megatron run's distributed checkpoint, read back with ``lmhpc.exchange.megatron.read_megatron_step``,
must equal the starting weights up to the one tiny update (lr 1e-9).

    python tools/gpu_check_megatron.py --out bench/results/megatron_vs_native.json
    python tools/gpu_check_megatron.py --steps 30 --modes bf16 --no-conversion   # quick

Each run is its own process (megatron-core keeps global parallel state). Without CUDA it stops at once with
exit code 2 and says so.
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

BACKENDS = ("native", "megatron")
MODES = ("bf16", "fp8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="bf16,fp8", help="bf16 and/or fp8")
    p.add_argument("--backends", default="native,megatron", help="native and/or megatron")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--megatron-spec", default="auto", choices=["auto", "te", "local"])
    p.add_argument("--megatron-fp8-recipe", default="delayed", choices=["delayed", "tensorwise"])
    p.add_argument("--no-compile", action="store_true", help="native backend without torch.compile")
    p.add_argument("--no-conversion", action="store_true", help="skip the checkpoint conversion check")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--out", default=None, help="write the figures as JSON")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes takes {' and/or '.join(MODES)}")
    if not args.backends or set(args.backends) - set(BACKENDS):
        p.error(f"--backends takes {' and/or '.join(BACKENDS)}")
    if args.steps < 3:
        p.error("--steps must be >= 3 (the first steps are warm-up)")
    return args


def plan(args: argparse.Namespace, have_te: bool, fp8_capable: bool) -> tuple[list[tuple[str, str]], list[str], str]:
    """The (backend, mode) runs, notes on what is skipped and why, and the megatron layer spec."""
    spec = args.megatron_spec
    notes = []
    if spec == "auto":
        spec = "te" if have_te else "local"
        if not have_te:
            notes.append("Transformer Engine does not import: megatron runs use the local spec, bf16 only")
    elif spec == "te" and not have_te:
        raise SystemExit("gpu_check_megatron: --megatron-spec te but transformer_engine does not import")
    runs = []
    for mode in args.modes:
        if mode == "fp8" and not fp8_capable:
            notes.append("this GPU has no FP8 tensor cores (compute capability < 8.9): FP8 runs skipped")
            continue
        for backend in args.backends:
            if backend == "megatron" and mode == "fp8" and spec != "te":
                notes.append("megatron FP8 needs the Transformer Engine spec: skipped")
                continue
            runs.append((backend, mode))
    return runs, notes, spec


def section(backend: str, mode: str, args: argparse.Namespace, prefix: Path, spec: str) -> dict[str, Any]:
    """The ``pretrain`` section of one run: the gpu_check_pretrain model and batch, this backend and mode."""
    from tools.gpu_check_pretrain import EOD, pretrain_section

    out = pretrain_section(mode, prefix, args.steps, args.seq_len, args.batch,
                           compile_model=backend == "native" and not args.no_compile, activation_checkpointing=False)
    out["data"]["eod_id"] = EOD
    if backend == "megatron":
        out["backend"] = "megatron"
        out["train"]["compile"] = False
        out["megatron"] = {"spec": spec, "fp8_recipe": args.megatron_fp8_recipe}
    return out


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of tokens/s: megatron over native per mode, FP8 over bf16 per backend (None where a run is missing)."""
    by = {(r["backend"], r["mode"]): r for r in results if r.get("tokens_per_s")}

    def ratio(a, b):
        return round(by[a]["tokens_per_s"] / by[b]["tokens_per_s"], 3) if a in by and b in by else None

    return {
        "ratio_megatron_vs_native": {m: ratio(("megatron", m), ("native", m)) for m in MODES},
        "ratio_fp8_vs_bf16": {b: ratio((b, "fp8"), (b, "bf16")) for b in BACKENDS},
    }


def worker(spec_path: str) -> int:
    """One run in this process (world size 1); writes its stats next to the spec."""
    import torch

    from lmhpc.context import StageContext
    from lmhpc.train import stage as pretrain_stage
    from tools.gpu_check_pretrain import run_config

    spec = json.loads(Path(spec_path).read_text())
    cfg = run_config(spec["section"], Path(spec["work"]), spec["name"])
    ctx = StageContext(cfg=cfg, stage="pretrain", rank=0, world_size=1, local_rank=0)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    stats = pretrain_stage.run(ctx)
    stats["max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
    stats["seconds"] = round(time.time() - t0, 1)
    Path(spec_path).with_suffix(".stats.json").write_text(json.dumps(stats, default=str))
    return 0


def launch(sec: dict[str, Any], work: Path, name: str, timeout: float) -> dict[str, Any]:
    from lmhpc.launch.local import torch_rank_envs

    spec = work / f"{name}.json"
    spec.write_text(json.dumps({"section": sec, "work": str(work), "name": name}))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **torch_rank_envs(1)[0], "PYTHONPATH": path, "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(spec)], env=env,
                          timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{name}: exit code {proc.returncode}")
    return json.loads(spec.with_suffix(".stats.json").read_text())


def check_conversion(work: Path, prefix: Path, args: argparse.Namespace, spec: str) -> dict[str, Any]:
    """Same weights → same step-1 loss in both backends; megatron checkpoint → our weights."""

    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.megatron import read_megatron_step
    from lmhpc.exchange.weights import ModelWeights, model_state
    from lmhpc.model.args import ModelArgs
    from lmhpc.model.transformer import Transformer
    from tools.gpu_check_pretrain import VOCAB, model_1b

    margs = ModelArgs(**{**model_1b(args.seq_len), "vocab_size": VOCAB})
    start = Transformer(margs, init_seed=7)
    weights = ModelWeights(model_state(start), margs)
    write_consolidated(weights, work / "start")
    losses, stats = {}, {}
    for backend in ("native", "megatron"):
        sec = section(backend, "bf16", args, prefix, spec)
        sec["train"].update({"steps": 1, "compile": False})
        sec["optimizer"] = {"lr": 1e-9, "warmup_steps": 0, "schedule": "constant"}
        sec["checkpoint"] = {"interval": 0, "save_final": backend == "megatron"}
        sec["init_from"] = str(work / "start")
        stats[backend] = launch(sec, work, f"convert-{backend}", args.timeout)
        losses[backend] = stats[backend]["final_loss"]
    gap = abs(losses["megatron"] - losses["native"]) / abs(losses["native"])
    back = read_megatron_step(Path(stats["megatron"]["last_checkpoint"])).state
    ours = weights.state
    # the checkpoint's model tensors are bf16 (the fp32 master weights are the optimizer's): each tensor
    # must equal the start within bf16 rounding (2^-8 relative) plus the one lr-1e-9 update
    rel = max(((back[k].float() - ours[k].float()).abs().max() / ours[k].float().abs().max().clamp(min=1e-12)).item()
              for k in ours)
    return {"step1_loss_native": losses["native"], "step1_loss_megatron": losses["megatron"],
            "loss_rel_gap": gap, "loss_ok": gap < 2e-2, "checkpoint_max_rel_diff": rel,
            "checkpoint_ok": back.keys() == ours.keys() and rel < 2**-7, "megatron_spec": spec,
            "dtype_note": "bf16 in both backends; the megatron checkpoint's model tensors are bf16"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check_megatron: no CUDA GPU is visible (torch.cuda.is_available() is False); this check trains "
              "a ~1B model with both backends on one GPU and cannot run on CPU. The CPU tests cover the "
              "translation, the conversion and the data path.", file=sys.stderr)
        return 2
    from lmhpc.train.megatron.translate import te_available

    name = torch.cuda.get_device_name()
    cap = torch.cuda.get_device_capability()
    have_te = te_available()
    runs, notes, spec = plan(args, have_te, cap >= (8, 9))
    for note in notes:
        print(f"gpu_check_megatron: {note}", flush=True)
    from tools.gpu_check_pretrain import write_tokens

    results, conversion = [], None
    with tempfile.TemporaryDirectory(prefix="lmhpc-gpu-check-megatron-") as tmp:
        work = Path(tmp)
        prefix = write_tokens(work, tokens=args.steps * args.batch * (args.seq_len + 1) + 10 * 8192)
        for backend, mode in runs:
            print(f"== {backend} {mode}: {args.steps} steps of {args.batch} × {args.seq_len} on {name}", flush=True)
            try:
                s = launch(section(backend, mode, args, prefix, spec), work, f"{backend}-{mode}", args.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                results.append({"backend": backend, "mode": mode, "error": str(e)})
                continue
            results.append({"backend": backend, "mode": mode, "tokens_per_s": s["steady_tokens_per_s"],
                            "mfu_pct": s["mfu_pct"], "tflops": s["steady_tflops_per_device"],
                            "final_loss": s["final_loss"], "params": s["params"], "precision": s["precision"],
                            "max_allocated_gib": s["max_allocated_gib"], "seconds": s["seconds"]})
        if not args.no_conversion and "megatron" in args.backends:
            try:
                conversion = check_conversion(work, prefix, args, spec)
            except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
                conversion = {"error": str(e)}

    print(f"\n{'backend':<10}{'mode':<6}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU %':>8}{'mem GiB':>9}{'loss':>8}")
    for r in results:
        if "error" in r:
            print(f"{r['backend']:<10}{r['mode']:<6} FAILED: {r['error']}")
            continue
        mfu = f"{r['mfu_pct']:.1f}" if r["mfu_pct"] is not None else "n/a"
        print(f"{r['backend']:<10}{r['mode']:<6}{r['tokens_per_s']:>12,.0f}{r['tflops']:>10.1f}{mfu:>8}"
              f"{r['max_allocated_gib']:>9.1f}{r['final_loss']:>8.3f}")
    summary = summarize(results)
    print(json.dumps(summary))
    if conversion:
        print("conversion:", json.dumps(conversion))
    report = {"device": name, "capability": list(cap), "torch": torch.__version__, "transformer_engine": have_te,
              "megatron_spec": spec, "notes": notes, "steps": args.steps, "seq_len": args.seq_len,
              "batch": args.batch, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results, **summary,
              "conversion": conversion,
              "mfu_note": "MFU against the GPU's dense BF16 peak, FP8 runs included"}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    failed = any("error" in r for r in results) or (conversion is not None and not (
        conversion.get("loss_ok") and conversion.get("checkpoint_ok")))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
