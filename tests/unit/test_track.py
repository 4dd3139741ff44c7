"""W&B tracking with the real wandb package in offline mode, read back from its .wandb files."""

from __future__ import annotations

import json
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
