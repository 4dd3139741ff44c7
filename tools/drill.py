"""Whole-chain SLURM drill (issue 16): run a tiny demo chain clean, then on SLURM under injected faults, and
check that nothing was lost.

    eval "$(bash tools/slurm_cluster.sh env)"
    .venv/bin/python tools/drill.py --faults 3 --seed 1 --runs-dir /tmp/drill --out /tmp/drill/drill.json

Faults (seeded RNG, random times, into RUNNING jobs of any stage, the kinds in turn):
``usr2`` (``scancel --signal=USR2``: the preemption notice; the stage saves and requeues itself),
``requeue`` (``scontrol requeue``: the job is killed without a save and requeued; the stage resumes from its
last checkpoint or finished units), ``kill9`` (``kill -9`` of one rank's process, a data stage's when one is
running: ``srun --kill-on-bad-exit`` ends the step and the job requeues itself, see lmhpc.launch.crash),
``preempt`` (partition-priority preemption: a job in the ``urgent`` partition takes the whole node; SLURM
sends SIGTERM, waits GraceTime and requeues the running jobs), ``drain`` (``scontrol update nodename=...
state=drain``, then resume: running jobs go on, new ones wait).
Checks: every stage DONE; data-stage outputs byte-identical to the clean run; training losses bitwise equal;
no W&B step logged twice or missing; sacct shows the requeues.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lmhpc.track import offline_run_dirs, read_history  # noqa: E402

FULL = ["curate", "dedup", "tokenizer", "tokenize", "pretrain", "constitutional", "sft", "ai_feedback", "reference",
        "dpo", "evaluate", "quantize"]
QUICK = FULL  # the same chain at the tiniest sizes
DATA_STAGES = ["curate", "dedup"]
TRAIN_STAGES = ["pretrain", "sft", "dpo"]
MAX_HITS = 2


def overrides(runs_dir: Path, stages: list[str], quick: bool) -> list[str]:
    inputs = (
        '[{path: "../data/sample/web/part-000.warc.gz", source: web, format: warc},'
        ' {path: "../data/sample/prose/part-001.jsonl.zst", source: prose},'
        ' {path: "../data/sample/code/part-000.jsonl.zst", source: code}]'
    )
    steps = train_steps(quick)["pretrain"]
    return [
        f"run.runs_dir={runs_dir}", f"curate.inputs={inputs}", f"run.stages=[{', '.join(stages)}]",
        "tokenizer.vocab_size=1000", "tokenizer.sample_mb=2",
        "tokenizer.analysis.heldout_mb=0.2", "tokenizer.analysis.per_source_sample_mb=0.5",
        "pretrain.model.dim=32", "pretrain.model.n_layers=2", "pretrain.model.n_heads=4", "pretrain.model.n_kv_heads=2",
        f"pretrain.train.steps={steps}", "pretrain.optimizer.warmup_steps=2",
        "pretrain.train.seq_len=32", "pretrain.model.max_seq_len=128",
        "pretrain.train.micro_batch_size=2", f"pretrain.checkpoint.interval={steps // 4}",
        "pretrain.metrics.log_every=1", f"pretrain.eval.interval={steps}", "pretrain.eval.max_tokens=512",
        "evaluate.tasks=[arc_easy]", "evaluate.limit=5", "evaluate.perplexity.lambada=2",
        "evaluate.perplexity.max_docs=2",
        "constitutional.max_prompts=2", "constitutional.chunk_size=1", "constitutional.rounds=1",
        "constitutional.sampling.max_new_tokens=4", "ai_feedback.chunk_size=1",
        "ai_feedback.sampling.max_new_tokens=4",
        f"sft.train.steps={steps // 2}", "sft.train.warmup_steps=1", f"sft.train.checkpoint_interval={steps // 8}",
        "sft.train.max_len=64", "sft.train.log_every=1",
        f"dpo.train.steps={steps // 2}", "dpo.train.warmup_steps=0", f"dpo.train.checkpoint_interval={steps // 8}",
        "dpo.train.max_len=64", "dpo.train.log_every=1",
        "quantize.methods=[{name: rtn-int4, method: rtn, bits: 4, group_size: 32}]", "quantize.gguf=[]",
        "quantize.calibration.sequences=2", "quantize.calibration.seq_len=32",
        "quantize.eval.limit=3", "quantize.eval.perplexity.max_docs=1", "quantize.eval.perplexity.max_tokens=500",
    ]


def train_steps(quick: bool) -> dict[str, int]:
    steps = 40 if quick else 160
    return {"pretrain": steps, "sft": steps // 2, "dpo": steps // 2}


def sh(*args: str, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(args)}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out


def lmhpc(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"lmhpc {' '.join(args[:2])}: {out.stdout[-3000:]}{out.stderr[-3000:]}")
    return out


def status_rows(run_dir: Path) -> list[dict]:
    return json.loads(lmhpc("status", str(run_dir), "--json").stdout)


def running_jobs() -> list[tuple[str, str]]:
    """(job id as squeue names it, job name) of every RUNNING job."""
    out = sh("squeue", "-h", "-t", "RUNNING", "-o", "%i|%j").stdout
    return [tuple(line.split("|", 1)) for line in out.splitlines() if "|" in line]  # type: ignore[misc]


def stage_of(run_dir: Path, job: str) -> str | None:
    base = job.split("_")[0]
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    for stage, info in stages.items():
        if any(str(j).split("_")[0] == base for j in info.get("job_ids", [])):
            return stage
    return None


def rank_pids(job: str) -> list[int]:
    """The processes of a job that run a stage (started by ``srun``), not its batch shell or srun itself."""
    pids = []
    for line in sh("scontrol", "listpids", job).stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 3 or fields[2] == "batch" or not fields[0].isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{fields[0]}/cmdline").read_bytes()
        except OSError:
            continue
        if b"lmhpc.launch.entry" in cmdline:
            pids.append(int(fields[0]))
    return sorted(pids)


def inject(kind: str, job: str, node: str, rng: random.Random) -> str | None:
    """Inject one fault; None when the job offered nothing to hit yet (no rank process), else the error."""
    if kind == "usr2":
        out = sh("scancel", "--signal=USR2", job)  # every step: the ranks honour it
    elif kind == "requeue":
        out = sh("scontrol", "requeue", job)
    elif kind == "kill9":
        pids = rank_pids(job)
        if not pids:
            return None
        out = sh("kill", "-9", str(rng.choice(pids)))
    elif kind == "preempt":  # a higher-priority partition takes the whole node for a few seconds
        out = sh("sbatch", "--partition=urgent", "--exclusive", "--job-name=drill.urgent", "--output=/dev/null",
                 "--wrap", "sleep 4")
    else:  # drain, wait a little, resume
        out = sh("scontrol", "update", f"nodename={node}", "state=drain", "reason=drill")
        time.sleep(3)
        sh("scontrol", "update", f"nodename={node}", "state=resume", check=True)
    return "" if out.returncode == 0 else out.stderr.strip()


def faulty_run(config: Path, ovr: list[str], run_dir: Path, n: int, rng: random.Random,
               timeout: float, steps: dict[str, int], kinds: list[str]) -> list[dict]:
    lmhpc("run", str(config), "--executor", "slurm", "run.name=drill", *ovr)
    node = sh("sinfo", "-h", "-o", "%N").stdout.split()[0]
    faults: list[dict] = []
    deadline = time.monotonic() + timeout
    next_at = time.monotonic() + rng.uniform(2, 10)
    while time.monotonic() < deadline:
        rows = status_rows(run_dir)
        if all(r["state"] in ("done", "failed", "cancelled") for r in rows):
            return faults
        if len(faults) < n and time.monotonic() >= next_at:
            jobs = [(j, s) for j, s in ((j, stage_of(run_dir, j)) for j, _ in running_jobs()) if s]
            kind = kinds[len(faults) % len(kinds)]
            if kind == "kill9" and any(s not in steps for _, s in jobs):  # a data rank when there is one
                jobs = [(j, s) for j, s in jobs if s not in steps]
            # at most MAX_HITS faults a job: it may be requeued resources.<stage>.max_requeues (3) times in all
            jobs = [(j, s) for j, s in jobs if sum(1 for f in faults if f["job"] == j) < MAX_HITS]
            if jobs:
                job, stage = rng.choice(jobs)
                err = inject(kind, job, node, rng)
                if err is not None:
                    faults.append({"kind": kind, "job": job, "stage": stage, "t": time.time(), "error": err})
                    print(f"fault {len(faults)}: {kind} {job} ({stage}) {err}", flush=True)
                    next_at = time.monotonic() + rng.uniform(3, 10)
        time.sleep(1)
    raise RuntimeError(f"drill run not finished after {timeout}s: {status_rows(run_dir)}")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def data_hashes(run: Path) -> dict[str, dict[str, str]]:
    out = {s: tree_hashes(run / s / "data") for s in DATA_STAGES if (run / s / "data").is_dir()}
    out["tokenize"] = {str(p.relative_to(run / "tokenize")): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted((run / "tokenize").rglob("*")) if p.suffix in (".bin", ".idx")}
    return out


def history(stage_dir: Path) -> list[dict]:
    rows = []
    for d in offline_run_dirs(stage_dir):
        rows.extend(read_history(d))
    return rows


def losses(stage_dir: Path) -> dict[int, float]:
    """step -> loss, taken from metrics.jsonl when there is one, else from the W&B offline history."""
    metrics = stage_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else history(stage_dir)
    return {int(r.get("step", r.get("_step", -1))): r["loss"] for r in rows if "loss" in r}


def wandb_steps(stage_dir: Path) -> tuple[list[int], list[int]]:
    """(steps logged twice, steps missing) over every attempt's offline run."""
    steps = [int(r["_step"]) for r in history(stage_dir) if "_step" in r and "loss" in r]
    dup = sorted({s for s in steps if steps.count(s) > 1})
    missing = sorted(set(range(min(steps), max(steps) + 1)) - set(steps)) if steps else []
    return dup, missing


def sacct_requeues(run_dir: Path) -> dict[str, int]:
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    out = {}
    for stage, info in stages.items():
        n = 0
        for job in info.get("job_ids", []):
            rows = sh("sacct", "-j", str(job), "-X", "-n", "-P", "--duplicates", "-o", "JobID,State").stdout
            n += sum(1 for line in rows.splitlines() if line.split("|")[-1].startswith(("REQUEUED", "PREEMPTED")))
        out[stage] = n
    return out


def check(clean: Path, drill: Path, stages: list[str], faults: list[dict]) -> dict:
    problems: list[str] = []
    for run in (clean, drill):
        for stage in stages:
            if not (run / stage / "DONE").exists():
                problems.append(f"{run.name}/{stage}: no DONE")
    hc, hd = data_hashes(clean), data_hashes(drill)
    for stage in hc:
        if hc[stage] != hd.get(stage):
            problems.append(f"{stage}: data differs from the clean run")
    loss_ok = {}
    for stage in TRAIN_STAGES:
        if stage not in stages:
            continue
        a, b = losses(clean / stage), losses(drill / stage)
        loss_ok[stage] = bool(a) and a == b
        if not loss_ok[stage]:
            problems.append(f"{stage}: losses differ ({len(a)} vs {len(b)} steps)")
        dup, missing = wandb_steps(drill / stage)
        if dup or missing:
            problems.append(f"{stage}: W&B steps logged twice {dup}, missing {missing}")
    requeues = sacct_requeues(drill)
    expected = sorted({f["stage"] for f in faults if f["kind"] in ("requeue", "kill9") and not f["error"]})
    for stage in expected:  # (a USR2 after a stage's last step or unit is rightly ignored: nothing to save)
        if not requeues.get(stage):
            problems.append(f"{stage}: killed or requeued but sacct shows no requeue")
    survived = sum(1 for f in faults if not f["error"]) if not problems else 0
    return {"faults_injected": len(faults), "faults_survived": survived, "faults": faults,
            "sacct_requeues": requeues, "data_files_compared": {s: len(v) for s, v in hc.items()},
            "losses_bitwise_equal": loss_ok, "problems": problems, "ok": not problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faults", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/lmhpc-drill"))
    ap.add_argument("--quick", action="store_true", help="the shortest chain, tiniest sizes (CI)")
    ap.add_argument("--out", type=Path, help="write the summary as JSON")
    ap.add_argument("--kinds", default="usr2,requeue,kill9,preempt,drain",
                    help="fault kinds, injected in turn (usr2, requeue, kill9, preempt, drain)")
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args(argv)
    stages = QUICK if args.quick else FULL
    runs = args.runs_dir.resolve()
    runs.mkdir(parents=True, exist_ok=True)
    config = REPO / "configs" / "demo.yaml"
    ovr = overrides(runs, stages, args.quick)
    t0 = time.monotonic()
    lmhpc("run", str(config), "--executor", "local", "run.name=clean", *ovr, timeout=args.timeout)
    t_clean = time.monotonic() - t0
    t0 = time.monotonic()
    faults = faulty_run(config, ovr, runs / "drill", args.faults, random.Random(args.seed), args.timeout,
                        train_steps(args.quick), args.kinds.split(","))
    t_drill = time.monotonic() - t0
    summary = check(runs / "clean", runs / "drill", stages, faults)
    summary.update(stages=stages, seed=args.seed, clean_s=round(t_clean, 1), drill_s=round(t_drill, 1))
    summary["timing"] = json.loads(lmhpc("status", str(runs / "drill"), "--timing", "--json").stdout)
    lmhpc("report", str(runs / "drill"))  # the run's report closes the chain
    if not (runs / "drill" / "report" / "index.html").exists():
        summary["problems"].append("report: no index.html")
        summary["ok"] = False
    print(f"{'#':>2} {'fault':8} {'stage':10} job")
    for i, f in enumerate(faults, 1):
        print(f"{i:>2} {f['kind']:8} {f['stage']:10} {f['job']} {f['error']}")
    print(f"faults injected {summary['faults_injected']}, survived {summary['faults_survived']}; "
          f"sacct requeues {summary['sacct_requeues']}")
    print(f"losses bitwise equal: {summary['losses_bitwise_equal']}; data files compared: "
          f"{summary['data_files_compared']}")
    print("lost: " + ("; ".join(summary["problems"]) or "nothing"))
    print(lmhpc("status", str(runs / "drill"), "--timing").stdout)
    print(f"clean {t_clean:.0f}s, drill {t_drill:.0f}s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2, default=str))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
