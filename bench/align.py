"""DPO: our reference + dpo stages against TRL's DPOTrainer on the same model, pairs, batch and budget — speed and
peak memory; with ``bench/align_grpo.py`` present, its GRPO comparison is run too and merged in.

Both sides start from the same random policy (ours from its consolidated folder, TRL from our Hugging Face export
of it) and train on the same token ids (the shipped preference pairs, data/align/preference/pairs.jsonl, rendered
with the chat template and the end token by :mod:`lmhpc.preference.data`; TRL is handed those ids), with the same
loss (sigmoid, β 0.1), batch of pairs, learning rate (constant), AdamW settings, gradient clipping, fp32 on CPU and
reference log-probs computed once before training on both sides (ours: the reference stage; TRL:
``precompute_ref_log_probs``). Each side runs in its own child process (one torch thread each):

- ours: ``lmhpc stage reference`` then ``lmhpc stage dpo`` (the alignment core's step), clocked at the end of each
  of the core's optimizer steps;
- TRL: ``DPOTrainer.train()`` with ``max_steps``, clocked by a callback at each step end.

Optimizer steps per CPU-second of each process (first step left out; medians) give ``ratio_vs_trl_dpo``: load
from other processes on shared cores does not change them; wall-clock steps/s are reported beside them. Peak
memory: each child's maximum resident set (``wait4``). The losses of both sides are recorded (they agree: see
tests/preference).

    .venv/bin/python bench/align.py              # writes bench/results/align.json (DPO, then GRPO if present)
    .venv/bin/python bench/align.py --quick      # 6 steps, a smaller model
    .venv/bin/python bench/align.py --no-grpo    # DPO only
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
import subprocess
import tempfile
import time
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PAIRS = REPO / "data" / "align" / "preference" / "pairs.jsonl"


def make_tokenizer(folder: Path) -> Path:
    """A sentencepiece BPE model (byte fallback, ChatML tokens) of the pairs' text, with its Hugging Face files."""
    import sentencepiece as spm

    from lmhpc.tokenizer.hf_export import write_hf_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for line in PAIRS.read_text().splitlines():
        r = json.loads(line)
        prompt = r["prompt"] if isinstance(r["prompt"], str) else " ".join(m["content"] for m in r["prompt"])
        lines += [prompt, r["chosen"], r["rejected"]]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=512, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=3, num_threads=1, minloglevel=2,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], split_digits=True,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    (folder / "corpus.txt").unlink()
    write_hf_tokenizer(folder / "tokenizer.model", folder)
    return folder


def make_policy(folder: Path, tokenizer: Path, dim: int, layers: int, seed: int) -> tuple[Path, Path]:
    """The starting policy as a consolidated folder (ours) and a Hugging Face folder (TRL)."""
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.hf import write_hf
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
    from lmhpc.model.args import ModelArgs
    from lmhpc.model.transformer import Transformer

    torch.manual_seed(seed)
    model = Transformer(ModelArgs(vocab_size=512, dim=dim, n_layers=layers, n_heads=max(4, dim // 64),
                                  n_kv_heads=max(2, dim // 128), max_seq_len=256))
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer))
    return write_consolidated(weights, folder / "consolidated"), write_hf(weights, folder / "hf")


# --------------------------------------------------------------------------------------------- sides


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _per_step(marks: list[tuple[float, float]]) -> dict[str, Any]:
    """Steps/s from the step-end marks (wall, CPU), the first step (warm-up) left out."""
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
    return {"steps_per_s": 1 / statistics.median(wall), "steps_per_cpu_s": 1 / statistics.median(cpu),
            "step_seconds": wall, "step_cpu_seconds": cpu}


def side_ours(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    from lmhpc.align.trainer import AlignTrainer
    from lmhpc.cli import main as cli
    from lmhpc.train.metrics import read_metrics

    marks: list[tuple[float, float]] = []
    step = AlignTrainer._step

    def timed_step(self, *a, **k):  # noqa: ANN001, ANN202 (the core's optimizer step, clocked at its end)
        out = step(self, *a, **k)
        marks.append(_clocks())
        return out

    AlignTrainer._step = timed_step
    cfg = {"run": {"name": "bench", "runs_dir": str(work / "runs"), "stages": ["reference", "dpo"],
                   "seed": spec["seed"]},
           "wandb": {"mode": "disabled"},
           "reference": {"batch_size": spec["batch"], "device": "cpu"},
           "dpo": {"data": [str(PAIRS)], "init_from": spec["consolidated"], "loss_type": "sigmoid", "beta": 0.1,
                   "train": {"steps": spec["steps"], "lr": spec["lr"], "schedule": "constant", "warmup_steps": 0,
                             "global_batch_size": spec["batch"], "micro_batch_size": spec["batch"], "max_len": 256,
                             "device": "cpu", "checkpoint_interval": 0, "grad_clip": 1.0}}}
    path = work / "ours.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    if cli(["stage", "reference", str(path)]):
        raise RuntimeError("our reference stage failed")
    reference_seconds = time.perf_counter() - t0
    if cli(["stage", "dpo", str(path)]):
        raise RuntimeError("our dpo stage failed")
    rows = read_metrics(work / "runs" / "bench" / "dpo" / "metrics.jsonl")
    return {**_per_step(marks), "losses": [r["loss"] for r in rows], "reference_seconds": reference_seconds}


def pair_order(spec: dict[str, Any]) -> tuple[list[dict[str, list[int]]], int]:
    """The pairs as our dpo stage draws them, step by step (the core's seeded epochs), as token ids."""
    from lmhpc.align.trainer import BatchSlot
    from lmhpc.data.quarantine import Quarantine
    from lmhpc.exchange.load import read_weights, weights_tokenizer
    from lmhpc.preference.data import load_pairs

    tokenizer = weights_tokenizer(read_weights(spec["consolidated"]))
    with tempfile.TemporaryDirectory() as tmp, Quarantine(Path(tmp) / "q.jsonl") as q:
        data = load_pairs([PAIRS], tokenizer, 256, q)
    rows = []
    for step in range(spec["steps"]):
        for i in BatchSlot(step, 0, 1, spec["batch"], 0, 1, spec["seed"]).indices(len(data.pairs)):
            p = data.pairs[i]
            rows.append({"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids),
                         "rejected_ids": list(p.rejected_ids)})
    return rows, len(data.pairs)


def side_trl(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    rows, _ = pair_order(spec)
    model = AutoModelForCausalLM.from_pretrained(spec["hf"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["hf"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["hf"])

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.marks.append(_clocks())

    class Trainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):  # noqa: ANN001
            return dataset  # already our token ids, in our order

    args = trl.DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=spec["batch"],
                         gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="constant",
                         warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=spec["steps"],
                         logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                         gradient_checkpointing=False, seed=spec["seed"], train_sampling_strategy="sequential",
                         dataloader_num_workers=0, disable_tqdm=True, beta=0.1, loss_type=["sigmoid"],
                         max_length=None, precompute_ref_log_probs=True, precompute_ref_batch_size=spec["batch"])
    t0 = time.perf_counter()
    trainer = Trainer(model=model, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=tokenizer)
    times = StepTimes()
    trainer.add_callback(times)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "rewards/chosen" in h]
    return {**_per_step(times.marks), "losses": losses, "setup_and_train_seconds": time.perf_counter() - t0}


def run_side(name: str, work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One side in a child process; its result and its peak resident memory."""
    spec_path, out = work / f"{name}-spec.json", work / f"{name}-result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "WANDB_MODE": "disabled",
           "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, __file__, "--side", name, "--work", str(work)], env=env, cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode:
        raise RuntimeError(f"the {name} side failed ({proc.returncode}):\n{(work / f'{name}.log').read_text()[-3000:]}")
    result = json.loads(out.read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def child(name: str, work: Path) -> int:
    spec = json.loads((work / f"{name}-spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    result = side_ours(work, spec) if name == "ours" else side_trl(work, spec)
    (work / f"{name}-result.json").write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------- the comparison


def run_dpo(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lmhpc-bench-dpo-") as tmp:
        work = Path(tmp)
        tokenizer = make_tokenizer(work / "tokenizer")
        consolidated, hf = make_policy(work / "policy", tokenizer, args.dim, args.layers, args.seed)
        spec = {"consolidated": str(consolidated), "hf": str(hf), "steps": args.steps, "batch": args.batch,
                "lr": args.lr, "seed": args.seed, "threads": args.threads}
        _, n_pairs = pair_order(spec)
        sides = {name: run_side(name, work, spec) for name in ("ours", "trl")}
    ours, theirs = sides["ours"], sides["trl"]
    diffs = [abs(a - b) / abs(b) for a, b in zip(ours["losses"], theirs["losses"])]
    return {
        "ratio_vs_trl_dpo": round(ours["steps_per_cpu_s"] / theirs["steps_per_cpu_s"], 3),
        "ratio_vs_trl_dpo_wall": round(ours["steps_per_s"] / theirs["steps_per_s"], 3),
        "dpo": {
            "what": "DPO optimizer steps/s: our reference + dpo stages vs TRL's DPOTrainer (precomputed reference "
                    "log-probs) on the same model (HF export), token ids, batch order and optimizer settings",
            "ratio_basis": "median optimizer steps per CPU-second of each side's process (first step left out); the "
                           "wall-clock ratio swings with the load others put on the shared cores",
            "ours": {k: v for k, v in ours.items() if not k.startswith("step_")},
            "trl": {k: v for k, v in theirs.items() if not k.startswith("step_")},
            "peak_rss_mb": {"ours": ours["peak_rss_mb"], "trl": theirs["peak_rss_mb"]},
            "max_relative_loss_difference": max(diffs) if diffs else None,
            "step_seconds": {"ours": ours["step_seconds"], "trl": theirs["step_seconds"]},
            "step_cpu_seconds": {"ours": ours["step_cpu_seconds"], "trl": theirs["step_cpu_seconds"]},
            "config": {"steps": args.steps, "pairs_per_step": args.batch, "lr": args.lr, "loss_type": "sigmoid",
                       "beta": 0.1, "pairs": n_pairs, "threads": args.threads, "seed": args.seed,
                       "model": f"random init, dim {args.dim}, {args.layers} layers, vocabulary 512",
                       "data": "data/align/preference/pairs.jsonl"},
        },
    }


def run_grpo(quick: bool) -> dict[str, Any] | None:
    """bench/align_grpo.py's ``run(args)`` (its defaults; ``--quick`` passed on), when that file exists."""
    path = REPO / "bench" / "align_grpo.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("align_grpo", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    grpo_args = module.parser().parse_args(["--quick"] if quick else [])
    if quick:
        grpo_args.steps, grpo_args.dim, grpo_args.layers, grpo_args.reward_window = 6, 64, 2, 2
    return module.run(grpo_args)


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__, "trl": version("trl"),
            "transformers": version("transformers")}


def machine(threads: int) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "load_avg_1_5_15": list(os.getloadavg()),
            "platform": platform.platform()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="6 steps, dim 64, 2 layers (and GRPO's --quick)")
    p.add_argument("--no-grpo", action="store_true", help="leave out bench/align_grpo.py")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "align.json"))
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = parser().parse_args()
    if args.side:
        return child(args.side, Path(args.work))
    if args.quick:
        args.steps, args.dim, args.layers = 6, 64, 2
    result: dict[str, Any] = {"name": "align", **run_dpo(args)}
    d = result["dpo"]
    print(f"\nDPO {'':<4}{'steps/CPU-s':>12}{'steps/s':>10}{'peak MB':>10}{'first loss':>12}{'last loss':>11}")
    for name, side in (("lmhpc", d["ours"]), ("TRL", d["trl"])):
        print(f"{name:<8}{side['steps_per_cpu_s']:>12.3f}{side['steps_per_s']:>10.3f}{side['peak_rss_mb']:>10.1f}"
              f"{side['losses'][0]:>12.4f}{side['losses'][-1]:>11.4f}")
    print(f"ratio_vs_trl_dpo = {result['ratio_vs_trl_dpo']} per CPU-second (wall clock "
          f"{result['ratio_vs_trl_dpo_wall']}; goal >= 2, floor 1)")
    grpo = None if args.no_grpo else run_grpo(args.quick)
    if grpo is not None:
        result["ratio_vs_trl_grpo"] = grpo.get("ratio_vs_trl_grpo")
        result["ratio_vs_trl_grpo_wall"] = grpo.get("ratio_vs_trl_grpo_wall")
        result["grpo"] = {k: v for k, v in grpo.items() if k not in ("name", "machine", "versions", "date", "command")}
        print(f"ratio_vs_trl_grpo = {result['ratio_vs_trl_grpo']} per CPU-second (bench/align_grpo.py)")
    result.update({"goal": {"ratio_vs_trl_dpo": ">= 2 (floor 1)", "ratio_vs_trl_grpo": ">= 2 (floor 1)"},
                   "machine": machine(args.threads), "versions": versions(),
                   "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "command": " ".join(["python bench/align.py", *sys.argv[1:]])})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
