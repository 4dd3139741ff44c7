"""W&B tracking with the real wandb package in offline mode, read back from its .wandb files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmhpc.config import load_config
from lmhpc.runner import run_stage
from lmhpc.track import WandbTracker, offline_run_dirs, read_history, read_run_info, run_id_for, sync_commands
from tests.conftest import write_config
from tests.helpers import curate_config, write_jsonl_corpus


def _tracker(stage_dir: Path) -> WandbTracker:
    return WandbTracker(stage_dir=stage_dir, run_id=run_id_for(stage_dir.parent, "r", "pretrain"), project="p",
                        group="r", job_type="pretrain", mode="offline", config={"lr": 0.1})


def test_offline_attempts_share_one_id_without_duplicate_steps(tmp_path):
    stage_dir = tmp_path / "r" / "pretrain"
    stage_dir.mkdir(parents=True)
    first = _tracker(stage_dir)
    for step in range(5):
        first.log({"loss": 10.0 - step, "nested": {"lr": 0.1}}, step=step)
    first.finish()
    # requeued: resumes from a checkpoint at step 2 and logs 3..7 again
    second = _tracker(stage_dir)
    for step in range(3, 8):
        second.log({"loss": 10.0 - step}, step=step)
    second.finish()

    dirs = offline_run_dirs(stage_dir)
    assert len(dirs) == 2
    h1, h2 = read_history(dirs[0]), read_history(dirs[1])
    assert [r["_step"] for r in h1] == [0, 1, 2, 3, 4]
    assert [r["_step"] for r in h2] == [5, 6, 7]
    assert h1[1]["loss"] == 9.0 and h1[0]["nested/lr"] == 0.1
    info1, info2 = read_run_info(dirs[0]), read_run_info(dirs[1])
    assert info1["run_id"] == info2["run_id"] == run_id_for(stage_dir.parent, "r", "pretrain")
    assert info1["group"] == "r" and info1["job_type"] == "pretrain"
    assert info1["config"]["lr"] == 0.1
    cmds = sync_commands(tmp_path / "r")
    assert len(cmds) == 1
    cmd = cmds[0]
    assert cmd[cmd.index("--id") + 1] == info1["run_id"]
    assert cmd[-2:] == [str(dirs[0]), str(dirs[1])]


def test_stage_logs_stats_and_never_writes_api_key(tmp_path, monkeypatch):
    secret = "wandb-secret-key-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=10)
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus))
    cfg = load_config(path)
    assert run_stage(cfg, "curate") == 0
    stage_dir = cfg.run_dir / "curate"
    dirs = offline_run_dirs(stage_dir)
    assert len(dirs) == 1
    rows = read_history(dirs[0])
    stats = json.loads((stage_dir / "stats.json").read_text())
    assert rows[-1]["stats/docs_in"] == stats["docs_in"]
    info = read_run_info(dirs[0])
    assert info["group"] == "t" and info["job_type"] == "curate"
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f"API key written to {f}"


KILLED_ATTEMPT = """
import json, os, signal, sys
from pathlib import Path
from lmhpc.track import WandbTracker, run_id_for
stage_dir = Path(sys.argv[1])
t = WandbTracker(stage_dir=stage_dir, run_id=run_id_for(stage_dir.parent, "r", "pretrain"), project="p",
                 group="r", job_type="pretrain", mode="offline", config={}, backfill=stage_dir / "metrics.jsonl")
with open(stage_dir / "metrics.jsonl", "a") as f:
    for step in range(1, 11):
        row = {"step": step, "loss": 10.0 / step}
        f.write(json.dumps(row) + "\\n")
        f.flush()
        t.log(row, step=step)
os.kill(os.getpid(), signal.SIGKILL)  # scontrol requeue / a lost node: no finish, no flush
"""


def test_attempt_killed_without_finish_loses_no_step(tmp_path):
    """The killed attempt's .wandb file stops short of the steps it logged (at least its last row is never
    committed); the next attempt resumes from a checkpoint at step 8 and logs the missing steps from
    metrics.jsonl first: every step 1..12 once, with the first attempt's losses."""
    import subprocess
    import sys

    stage_dir = tmp_path / "r" / "pretrain"
    stage_dir.mkdir(parents=True)
    repo = Path(__file__).resolve().parents[2]
    # its own W&B service, as a requeued job has (not this process's, which WANDB_SERVICE would name)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    out = subprocess.run([sys.executable, "-c", KILLED_ATTEMPT, str(stage_dir)], cwd=repo, capture_output=True,
                         text=True, timeout=120, env={**env, "WANDB_SILENT": "true"})
    assert out.returncode == -9, out.stderr[-2000:]
    state = json.loads((stage_dir / "wandb_state.json").read_text())
    assert state["last_step"] == 10
    written = [r["_step"] for d in offline_run_dirs(stage_dir) for r in read_history(d)]
    assert max(written, default=0) < 10  # what the kill lost
    # resume from the checkpoint at step 8: metrics.jsonl keeps steps <= 8, the run goes on from 9
    rows = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= 8))
    second = WandbTracker(stage_dir=stage_dir, run_id=run_id_for(stage_dir.parent, "r", "pretrain"), project="p",
                          group="r", job_type="pretrain", mode="offline", config={},
                          backfill=stage_dir / "metrics.jsonl")
    for step in range(9, 13):
        second.log({"step": step, "loss": 10.0 / step}, step=step)
    second.finish()
    history = [r for d in offline_run_dirs(stage_dir) for r in read_history(d)]
    steps = [r["_step"] for r in history]
    assert steps == list(range(1, 13))
    assert {r["_step"]: r["loss"] for r in history} == {s: 10.0 / s for s in range(1, 13)}
    state = json.loads((stage_dir / "wandb_state.json").read_text())
    first_missing = max(written, default=0) + 1
    assert state["attempts"][-1]["backfilled"] == [first_missing, 8, 8 - first_missing + 1]
