# ruff: noqa: E402  (the sys.path fix below must run before the other imports)
"""μTransfer demonstration: sweep the learning rate on a narrow and a wide model, under the standard
parametrisation (SP) and under μP, and compare where the best learning rate lands.

Under μP (``model.mup_base_dim`` = the narrow width) the best learning rate found on the narrow
model is also (nearly) the best on the wide one; under SP it moves (usually down) as width grows.
Width grows through the number of heads at a fixed head dimension. Same data (a synthetic
Markov-chain token stream, learnable), seed, steps and schedule for every run; the figure of merit
is the mean training loss of the last 10 steps. Everything runs through the project's model and
optimizer code (``lmhpc.model.transformer``, ``lmhpc.train.optim``).

    .venv/bin/python bench/mutransfer.py            # writes bench/results/mutransfer.json
    .venv/bin/python bench/mutransfer.py --quick    # fewer learning rates and steps
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds a tokenize.py, which would shadow the standard library's tokenize for a script run from here
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lmhpc.model.transformer import ModelArgs, Transformer
from lmhpc.train.config import OptimizerConfig
from lmhpc.train.data import synthetic_tokens
from lmhpc.train.optim import build_optimizer, lr_at, set_lr

VOCAB = 256
HEAD_DIM = 16


def train_once(width: int, base_width: int, mup: bool, lr: float, data: torch.Tensor, steps: int, batch: int,
               seed: int) -> float:
    """Mean loss of the last 10 steps of one run (inf if it diverged)."""
    args = ModelArgs(vocab_size=VOCAB, dim=width, n_layers=2, n_heads=width // HEAD_DIM, max_seq_len=data.shape[1],
                     mup_base_dim=base_width if mup else 0, depth_scaled_init=True)
    torch.manual_seed(seed)
    model = Transformer(args)
    opt_cfg = OptimizerConfig(lr=lr, warmup_steps=steps // 10, schedule="cosine", min_lr_ratio=0.1,
                              weight_decay=0.0, grad_clip=1.0)
    opt = build_optimizer(model, args, opt_cfg)
    losses = []
    for step in range(steps):
        set_lr([opt], lr_at(step, steps, opt_cfg))
        rows = data[(step * batch) % (len(data) - batch):][:batch]
        logits = model(rows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
        if not torch.isfinite(loss):
            return math.inf
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tail = losses[-10:]
    return float(sum(tail) / len(tail))


def best_lr(losses: dict[float, float]) -> float:
    return min(losses, key=lambda lr: losses[lr])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--narrow", type=int, default=64)
    p.add_argument("--wide", type=int, default=256)
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--log2-lrs", default="-12,-11,-10,-9,-8,-7,-6,-5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 learning rates, 60 steps")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "mutransfer.json"))
    args = p.parse_args()
    if args.quick:
        args.log2_lrs, args.steps = "-11,-9,-7,-5", 60
    torch.set_num_threads(1)
    load_before = list(os.getloadavg())
    lrs = [2.0 ** int(x) for x in args.log2_lrs.split(",")]
    docs = synthetic_tokens(VOCAB, num_docs=200, doc_len=args.seq_len + 1, seed=args.seed, eod=0)
    data = torch.as_tensor(np.stack(docs))

    table: dict[str, dict[int, dict[float, float]]] = {"sp": {}, "mup": {}}
    t0 = time.time()
    for param in ("sp", "mup"):
        for width in (args.narrow, args.wide):
            table[param][width] = {}
            for lr in lrs:
                loss = train_once(width, args.narrow, param == "mup", lr, data, args.steps, args.batch, args.seed)
                table[param][width][lr] = loss
                print(f"{param:<4} width {width:<4} lr 2^{int(math.log2(lr)):<4} loss {loss:.4f}", flush=True)

    shifts = {}
    print(f"\n{'':<6}" + "".join(f"{'2^' + str(int(math.log2(lr))):>9}" for lr in lrs) + "   best")
    for param in ("sp", "mup"):
        for width in (args.narrow, args.wide):
            row = table[param][width]
            print(f"{param:<4}{width:<4}" + "".join(f"{row[lr]:>9.4f}" for lr in lrs)
                  + f"   2^{int(math.log2(best_lr(row)))}")
        shifts[param] = math.log2(best_lr(table[param][args.wide])) - math.log2(best_lr(table[param][args.narrow]))
    print(f"\nbest-lr shift from width {args.narrow} to {args.wide} (octaves): SP {shifts['sp']:+.0f}, "
          f"μP {shifts['mup']:+.0f}")

    from importlib.metadata import version

    result = {
        "name": "mutransfer",
        "what": "learning-rate sweep on a narrow and a wide model, standard parametrisation vs μP",
        "figures": {
            "loss": {param: {str(w): {f"2^{int(math.log2(lr))}": round(v, 5) for lr, v in rows.items()}
                             for w, rows in table[param].items()} for param in table},
            "best_lr_log2": {param: {str(w): int(math.log2(best_lr(rows))) for w, rows in table[param].items()}
                             for param in table},
            "best_lr_shift_octaves": shifts,
        },
        "ratio_vs_standard_parametrisation": {
            "abs_shift_mup_over_sp": (abs(shifts["mup"]) / abs(shifts["sp"])) if shifts["sp"] else None,
        },
        "config": {"narrow": args.narrow, "wide": args.wide, "head_dim": HEAD_DIM, "layers": 2, "steps": args.steps,
                   "batch": args.batch, "seq_len": args.seq_len, "vocab": VOCAB, "lrs_log2": args.log2_lrs,
                   "seed": args.seed},
        "machine": {"cores": os.cpu_count(), "load_avg_before": load_before,
                    "load_avg_after": list(os.getloadavg()), "platform": platform.platform()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "lmhpc": version("lmhpc")},
        "seconds": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "python bench/mutransfer.py" + (" --quick" if args.quick else ""),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
