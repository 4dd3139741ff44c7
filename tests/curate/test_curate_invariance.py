"""The curate stage gives the same bytes whatever the number of tasks, and after a killed task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from curate_corpus import mixed_docs, write_jsonl

from lmhpc.config import load_config
from lmhpc.runner import run_stage

VOLATILE = {"wall_s", "seconds", "filter_seconds", "units_done", "units_skipped"}


def make_inputs(root: Path) -> None:
    for k in range(5):
        write_jsonl(root / "in" / "web" / f"w{k}.jsonl", mixed_docs(f"w{k}", 30, seed=k) + ["{broken"])
    write_jsonl(root / "in" / "prose" / "p.jsonl", mixed_docs("p", 20, seed=9))


def config(make_config, name: str) -> Path:
    return make_config({
        "run": {"name": name, "stages": ["curate"]},
        "wandb": {"mode": "disabled"},
        "curate": {
            "inputs": [{"path": "in/web/*.jsonl", "source": "web"}, {"path": "in/prose/*.jsonl", "weight": 0.7}],
            "shard_max_mb": 0.02,  # several shards per unit
            "samples_per_reason": 3,
            "write_dropped": True,
            "selection": {"mode": "sample", "score": "gopher_quality.alpha_words_ratio", "sampler": "linear"},
        },
    }, name=f"{name}.yaml")


def lmhpc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmhpc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def snapshot(stage_dir: Path) -> dict[str, bytes]:
    """Every output file of the stage (data, dropped, quarantine, samples) by relative path."""
    out = {}
    for folder in ("data", "dropped", "quarantine", "samples", "report"):
        for p in sorted((stage_dir / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(stage_dir))] = p.read_bytes()
    out["report.txt"] = (stage_dir / "report.txt").read_bytes()
    return out


def stable_stats(stage_dir: Path) -> dict:
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VOLATILE}
        return x

    return strip(json.loads((stage_dir / "stats.json").read_text()))


def test_one_two_three_tasks_give_identical_output(tmp_path: Path, make_config) -> None:
    make_inputs(tmp_path)
    snapshots, stats = [], []
    for tasks in (1, 2, 3):
        path = config(make_config, f"t{tasks}")
        if tasks == 2:  # the local executor: two concurrent task processes, then the finalize process
            res = lmhpc("run", str(path), "--stages", "curate", f"resources.curate.tasks={tasks}", cwd=tmp_path)
            assert res.returncode == 0, res.stderr[-3000:]
        else:  # the same tasks in this process, one after the other
            cfg = load_config(path)
            for task in range(tasks):
                assert run_stage(cfg, "curate", task=task, num_tasks=tasks) == 0
            assert run_stage(cfg, "curate", finalize=True) == 0
        stage_dir = tmp_path / "runs" / f"t{tasks}" / "curate"
        snapshots.append(snapshot(stage_dir))
        stats.append(stable_stats(stage_dir))
    assert len([k for k in snapshots[0] if k.startswith("data/")]) > 6
    assert snapshots[0] == snapshots[1] == snapshots[2]
    assert stats[0] == stats[1] == stats[2]
    assert stats[0]["docs_in"] == stats[0]["docs_out"] + stats[0]["quarantined"] + sum(stats[0]["dropped"].values())
    assert stats[0]["dropped"].get("selection/sampled_out") and stats[0]["dropped"].get("mixing/downsampled")


def test_a_killed_task_resumes_to_the_same_output(tmp_path: Path, make_config, caplog) -> None:
    make_inputs(tmp_path)
    assert run_stage(load_config(config(make_config, "ref")), "curate") == 0
    path = config(make_config, "killed")
    stage_dir = tmp_path / "runs" / "killed" / "curate"
    proc = subprocess.Popen([sys.executable, "-m", "lmhpc", "stage", "curate", str(path), "--task", "0",
                             "--num-tasks", "1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_marker = stage_dir / "_units" / "000000.json"
    deadline = time.time() + 120
    while not first_marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: half-written shards stay behind
    proc.wait()
    done_before = len(list((stage_dir / "_units").glob("*.json")))
    assert 1 <= done_before < 6  # killed part-way: some units done, others not
    assert not (stage_dir / "DONE").exists()
    (stage_dir / "data" / ".part-00005-00000.jsonl.zst.leftover.tmp").write_bytes(b"half a shard")
    caplog.set_level("INFO", logger="lmhpc.runner")
    assert run_stage(load_config(path), "curate") == 0  # the rerun skips the finished units
    assert f"{done_before} already done before" in caplog.text
    assert snapshot(stage_dir) == snapshot(tmp_path / "runs" / "ref" / "curate")
    assert stable_stats(stage_dir) == stable_stats(tmp_path / "runs" / "ref" / "curate")
    assert not list((stage_dir / "data").glob(".*"))
