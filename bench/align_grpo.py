"""GRPO: our grpo stage against TRL's GRPOTrainer on the same model, prompts and budget — speed and learning.

Both sides start from the same random policy (ours from its consolidated folder, TRL from our Hugging Face export
of it), over the same character-level tokenizer, on the same arithmetic records (``a+b=`` with operands up to
``--max-operand``), with the same group size, completion length, learning rate (constant), optimizer steps and
loss (``dapo``, β = 0, ε = 0.2). Each side runs in its own child process (one torch thread each):

- ours: ``lmhpc stage grpo`` (rollouts with the KV-cache generator, the alignment core's step), clocked at the end
  of each of the core's optimizer steps;
- TRL: ``GRPOTrainer.train()`` with ``max_steps``, clocked by a callback at each step end.

Steps per CPU-second of each process (first step left out; medians) give ``ratio_vs_trl_grpo``: load from other
processes on shared cores does not change them; wall-clock steps/s are reported beside them.

Peak memory: each child's maximum resident set (``wait4``). Learning: the mean reward of the last steps (the same
reward functions on both sides) and the greedy exact-answer accuracy of each final policy on held-out records,
scored by the same code.

    .venv/bin/python bench/align_grpo.py            # writes bench/results/align_grpo.json
    .venv/bin/python bench/align_grpo.py --quick    # 6 steps, a smaller model
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

REWARDS = ["lmhpc.rl.rewards:exact_answer", "lmhpc.rl.rewards:format_reward"]
WEIGHTS = [1.0, 0.5]


def make_tokenizer(folder: Path) -> Path:
    """A sentencepiece BPE model (digits split; unk 0, eos 1, bos 2, pad 3) of the task's characters, with its
    ``tokenizer.json``."""
    import sentencepiece as spm

    from lmhpc.rl.tasks import generate
    from lmhpc.tokenizer.hf_export import write_hf_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    lines = [r["prompt"] + r["answer"] for r in generate(["arithmetic", "sorting", "formatting"], 600, seed=5)]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=36, model_type="bpe", character_coverage=1.0, split_digits=True,
                                   unk_id=0, eos_id=1, bos_id=2, pad_id=3, hard_vocab_limit=False, num_threads=1,
                                   minloglevel=2)
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
    model = Transformer(ModelArgs(vocab_size=36, dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, max_seq_len=64))
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer))
    return write_consolidated(weights, folder / "consolidated"), write_hf(weights, folder / "hf")


# --------------------------------------------------------------------------------------------- sides


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _per_step(marks: list[tuple[float, float]]) -> dict[str, Any]:
    """Steps/s from the step-end marks (wall, CPU), the first step (warm-up) left out: wall clock, and per
    CPU-second of the process (what load from other processes on shared cores does not change)."""
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

    cfg = {"run": {"name": "bench", "runs_dir": str(work / "runs"), "stages": ["grpo"], "seed": spec["seed"]},
           "wandb": {"mode": "disabled"},
           "grpo": {"init_from": spec["consolidated"],
                    "task": {"kinds": [], "num_records": 0, "files": [spec["records"]], "eval_records": 0},
                    "rewards": [{"function": f, "weight": w} for f, w in zip(REWARDS, WEIGHTS)],
                    "num_generations": spec["group"], "loss_type": "dapo", "beta": 0.0,
                    "sampling": {"max_completion_length": spec["completion_length"], "temperature": 1.0},
                    "train": {"steps": spec["steps"], "lr": spec["lr"], "schedule": "constant", "warmup_steps": 0,
                              "global_batch_size": spec["batch"], "micro_batch_size": spec["batch"],
                              "max_len": 64, "device": "cpu", "checkpoint_interval": 0, "grad_clip": 1.0}}}
    path = work / "ours.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = cli(["stage", "grpo", str(path)])
    if code:
        raise RuntimeError(f"our grpo stage failed with exit code {code}")
    rows = read_metrics(work / "runs" / "bench" / "grpo" / "metrics.jsonl")
    return {**_per_step(marks), "rewards": [r["reward"] for r in rows],
            "model": str(work / "runs" / "bench" / "grpo")}


def side_trl(work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from lmhpc.rl.rewards import load_reward_function

    records = [json.loads(line) for line in Path(spec["records"]).read_text().splitlines()]
    dataset = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"], "task": r["task"]}
                                          for r in records])
    model = AutoModelForCausalLM.from_pretrained(spec["hf"], dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(spec["hf"])

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.marks.append(_clocks())

    args = trl.GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=spec["batch"],
                          num_generations=spec["group"], max_completion_length=spec["completion_length"],
                          learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
                          max_steps=spec["steps"], loss_type="dapo", beta=0.0, temperature=1.0, top_k=0, top_p=1.0,
                          max_grad_norm=1.0, weight_decay=0.0, report_to="none", use_cpu=True, bf16=False,
                          logging_steps=1, save_strategy="no", seed=spec["seed"], disable_dropout=True,
                          dataloader_num_workers=0)
    funcs = [load_reward_function(f) for f in REWARDS]
    trainer = trl.GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                              processing_class=tokenizer)
    trainer.reward_weights = torch.tensor(WEIGHTS)
    times = StepTimes()
    trainer.add_callback(times)
    trainer.train()
    trainer.save_model(str(work / "trl-final"))
    tokenizer.save_pretrained(str(work / "trl-final"))
    rewards = [row["reward"] for row in trainer.state.log_history if "reward" in row]
    return {**_per_step(times.marks), "rewards": rewards, "model": str(work / "trl-final")}


def run_side(name: str, work: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One side in a child process; its result and its peak resident memory."""
    spec_path, out = work / f"{name}-spec.json", work / f"{name}-result.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "WANDB_MODE": "disabled",
           "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
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


def accuracy(model_path: str, records: list[dict[str, str]], completion_length: int) -> float:
    """Greedy exact-answer accuracy of the model at ``model_path`` on ``records`` (our generator for both)."""
    from lmhpc.exchange.load import load_model
    from lmhpc.rl.common import greedy_accuracy

    loaded = load_model(model_path)
    return greedy_accuracy(loaded.model, loaded.tokenizer, records, completion_length, add_bos=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from lmhpc.rl.tasks import generate

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lmhpc-bench-grpo-") as tmp:
        work = Path(tmp)
        tokenizer = make_tokenizer(work / "tokenizer")
        consolidated, hf = make_policy(work / "policy", tokenizer, args.dim, args.layers, args.seed)
        records = generate(["arithmetic"], args.records, args.seed, max_operand=args.max_operand)
        trained = {r["prompt"] for r in records}
        held_out = [r for r in generate(["arithmetic"], 4 * args.eval_records, args.seed + 1, args.max_operand)
                    if r["prompt"] not in trained][:args.eval_records]
        (work / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        spec = {"consolidated": str(consolidated), "hf": str(hf), "records": str(work / "records.jsonl"),
                "steps": args.steps, "group": args.group, "batch": args.group * args.prompts,
                "completion_length": args.completion_length, "lr": args.lr, "seed": args.seed,
                "threads": args.threads}
        before = accuracy(str(consolidated), held_out, args.completion_length)
        sides = {name: run_side(name, work, spec) for name in ("ours", "trl")}
        for side in sides.values():
            side["accuracy_after"] = accuracy(side.pop("model"), held_out, args.completion_length)
            tail = side["rewards"][-args.reward_window:]
            side["mean_reward_last"] = sum(tail) / len(tail)
            side["mean_reward_first"] = sum(side["rewards"][:args.reward_window]) / len(side["rewards"][
                :args.reward_window])
    ours, theirs = sides["ours"], sides["trl"]
    return {
        "name": "align_grpo",
        "what": "GRPO optimizer steps/s and learning on the arithmetic task: our grpo stage vs TRL's GRPOTrainer on "
                "the same model (HF export), prompts, group size, completion length and budget",
        "ratio_vs_trl_grpo": round(ours["steps_per_cpu_s"] / theirs["steps_per_cpu_s"], 3),
        "ratio_vs_trl_grpo_wall": round(ours["steps_per_s"] / theirs["steps_per_s"], 3),
        "ratio_basis": "median optimizer steps per CPU-second of each side's process (first step left out); the "
                       "wall-clock ratio swings with the load others put on the shared cores",
        "ours": {k: v for k, v in ours.items() if not k.startswith("step_")},
        "trl": {k: v for k, v in theirs.items() if not k.startswith("step_")},
        "step_seconds": {"ours": ours["step_seconds"], "trl": theirs["step_seconds"]},
        "step_cpu_seconds": {"ours": ours["step_cpu_seconds"], "trl": theirs["step_cpu_seconds"]},
        "accuracy_before": before,
        "goal": {"ratio_vs_trl_grpo": ">= 2 (floor 1)"},
        "config": {"steps": args.steps, "prompts_per_step": args.prompts, "group": args.group,
                   "completion_length": args.completion_length, "lr": args.lr, "records": args.records,
                   "eval_records": len(held_out), "max_operand": args.max_operand, "threads": args.threads,
                   "model": f"random init, dim {args.dim}, {args.layers} layers, 4 heads, 2 KV heads, vocabulary 36",
                   "rewards": dict(zip(REWARDS, WEIGHTS)), "loss_type": "dapo", "beta": 0.0, "seed": args.seed},
        "machine": machine(args.threads),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python bench/align_grpo.py", *sys.argv[1:]]),
    }


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
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--prompts", type=int, default=8, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (num_generations)")
    p.add_argument("--completion-length", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--records", type=int, default=64)
    p.add_argument("--eval-records", type=int, default=64)
    p.add_argument("--max-operand", type=int, default=4)
    p.add_argument("--reward-window", type=int, default=5, help="steps averaged for the first/last reward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="6 steps, dim 64, 2 layers")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "align_grpo.json"))
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = parser().parse_args()
    if args.side:
        return child(args.side, Path(args.work))
    if args.quick:
        args.steps, args.dim, args.layers, args.reward_window = 6, 64, 2, 2
    result = run(args)
    o, t = result["ours"], result["trl"]
    print(f"\n{'':<8}{'steps/CPU-s':>12}{'steps/s':>10}{'peak MB':>10}{'reward first':>14}{'reward last':>13}"
          f"{'accuracy':>10}")
    for name, side in (("lmhpc", o), ("TRL", t)):
        print(f"{name:<8}{side['steps_per_cpu_s']:>12.3f}{side['steps_per_s']:>10.3f}{side['peak_rss_mb']:>10.1f}"
              f"{side['mean_reward_first']:>14.3f}"
              f"{side['mean_reward_last']:>13.3f}{side['accuracy_after']:>10.3f}")
    print(f"ratio_vs_trl_grpo = {result['ratio_vs_trl_grpo']} per CPU-second (wall clock "
          f"{result['ratio_vs_trl_grpo_wall']}; goal >= 2, floor 1); accuracy before "
          f"{result['accuracy_before']:.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
