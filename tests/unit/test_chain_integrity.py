"""A rerun never mixes old and new work: frozen unit lists, config fingerprints, --restart, the launch
snapshot, secrets, list overrides, the signal delay check, partial stats of a failed stage, log files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmhpc.config import ConfigError, dump_json, load_config, to_dict
from lmhpc.runner import run_stage
from tests.conftest import write_config
from tests.helpers import curate_config, tree_bytes, write_jsonl_corpus


def lmhpc(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, cwd=cwd)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    write_jsonl_corpus(folder, files=4, docs_per_file=20)
    return folder


@pytest.fixture
def cfg_path(tmp_path: Path, corpus: Path) -> Path:
    return write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus))


# ------------------------------------------------------------------------------------------ inputs frozen


def test_input_added_between_attempts_stops_the_stage(tmp_path, corpus, cfg_path):
    # task 0 of 2 runs, a file appears, task 1 would see another unit list: it must stop, not mix the two
    assert run_stage(load_config(cfg_path), "curate", task=0, num_tasks=2) == 0
    write_jsonl_corpus(tmp_path / "more", files=1, docs_per_file=5)
    (tmp_path / "more" / "part-000.jsonl").rename(corpus / "part-000a.jsonl")
    assert run_stage(load_config(cfg_path), "curate", task=1, num_tasks=2) == 1
    assert not (tmp_path / "runs" / "t" / "curate" / "_units" / "000001.json").exists()
    out = lmhpc("stage", "curate", str(cfg_path), "--task", "1", "--num-tasks", "2", check=False)
    assert out.returncode == 1
    assert "inputs changed" in out.stderr and "added" in out.stderr and "part-000a.jsonl" in out.stderr
    # --restart starts the stage over and gives what a clean run gives
    lmhpc("run", str(cfg_path), "--restart", "curate", "resources.curate.tasks=2")
    lmhpc("run", str(cfg_path), "run.name=clean")
    runs = tmp_path / "runs"
    assert tree_bytes(runs / "t" / "curate" / "data") == tree_bytes(runs / "clean" / "curate" / "data")


def test_changed_input_file_is_named(tmp_path, corpus, cfg_path):
    assert run_stage(load_config(cfg_path), "curate", task=0, num_tasks=2) == 0
    with open(corpus / "part-001.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "late", "text": "a late addition to the file."}) + "\n")
    out = lmhpc("stage", "curate", str(cfg_path), "--task", "1", "--num-tasks", "2", check=False)
    assert out.returncode == 1
    assert "changed (size or modification time): 0:" in out.stderr and "part-001.jsonl" in out.stderr


# ------------------------------------------------------------------------------------------ config fingerprint


def test_rerun_under_other_filters_stops_naming_the_key(tmp_path, cfg_path):
    assert run_stage(load_config(cfg_path), "curate", task=0, num_tasks=2) == 0
    out = lmhpc("stage", "curate", str(cfg_path), "curate.filters.gopher_quality.min_doc_words=3",
                "--task", "1", "--num-tasks", "2", check=False)
    assert out.returncode == 1
    assert "curate.filters.gopher_quality.min_doc_words: 50 -> 3" in out.stderr
    assert "--restart curate" in out.stderr
    # a key that does not change outputs may change
    assert run_stage(load_config(cfg_path, ["curate.progress_every_s=5"]), "curate", task=1, num_tasks=2) == 0


def test_complete_stage_under_changed_config_is_not_complete(tmp_path, cfg_path):
    lmhpc("run", str(cfg_path))
    again = lmhpc("run", str(cfg_path), check=False)
    assert again.returncode == 0 and "already complete" in again.stdout
    changed = lmhpc("run", str(cfg_path), "curate.filters.gopher_quality.min_doc_words=3", check=False)
    assert changed.returncode == 2
    assert "stage curate is complete" in changed.stderr and "min_doc_words: 50 -> 3" in changed.stderr
    done_before = json.loads((tmp_path / "runs" / "t" / "curate" / "DONE").read_text())
    out = lmhpc("run", str(cfg_path), "curate.filters.gopher_quality.min_doc_words=3", "--restart", "curate")
    assert "removed the outputs of curate" in out.stdout
    done_after = json.loads((tmp_path / "runs" / "t" / "curate" / "DONE").read_text())
    assert done_after["fingerprint"] != done_before["fingerprint"]
    saved = json.loads((tmp_path / "runs" / "t" / "curate" / "config.json").read_text())
    assert saved["curate"]["filters"]["gopher_quality"]["min_doc_words"] == 3


def test_unit_marker_of_another_config_is_refused(tmp_path, cfg_path):
    assert run_stage(load_config(cfg_path), "curate", task=0, num_tasks=2) == 0
    marker = tmp_path / "runs" / "t" / "curate" / "_units" / "000000.json"
    data = json.loads(marker.read_text())
    data["fingerprint"] = "0" * 16
    marker.write_text(json.dumps(data))
    assert run_stage(load_config(cfg_path), "curate", task=0, num_tasks=2) == 1


# ------------------------------------------------------------------------------------------ snapshot


def test_jobs_load_the_launch_snapshot(tmp_path, cfg_path):
    lmhpc("run", str(cfg_path), "curate.shard_max_mb=2", "--dry-run")
    lmhpc("run", str(cfg_path), "curate.shard_max_mb=2")
    snapshot = tmp_path / "runs" / "t" / "config.yaml"
    data = yaml.safe_load(snapshot.read_text())
    assert data["curate"]["shard_max_mb"] == 2
    assert data["_snapshot"]["source_file"] == str(cfg_path)
    # the snapshot loads on its own, relative paths resolving as in the original config
    cfg = load_config(snapshot)
    assert cfg.curate.shard_max_mb == 2 and cfg.run_dir == load_config(cfg_path).run_dir
    assert to_dict(cfg, redact=False) == to_dict(load_config(cfg_path, ["curate.shard_max_mb=2"]), redact=False)


def test_local_run_writes_log_files_per_task(tmp_path, cfg_path):
    lmhpc("run", str(cfg_path), "resources.curate.tasks=2")
    logs = tmp_path / "runs" / "t" / "curate" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["curate.finalize.log", "curate.task-0.log", "curate.task-1.log"]
    assert "task 1/2" in (logs / "curate.task-1.log").read_text()
    assert "stage curate complete" in (logs / "curate.finalize.log").read_text()


# ------------------------------------------------------------------------------------------ guard (local)


def test_second_launch_refused_while_a_local_launcher_runs(tmp_path, cfg_path):
    run_dir = tmp_path / "runs" / "t"
    run_dir.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run_dir / "pipeline.json").write_text(json.dumps({
            "executor": "local", "launcher_pid": sleeper.pid, "launcher_host": socket.gethostname(),
            "stages": {"curate": {"state": "running"}}}))
        out = lmhpc("run", str(cfg_path), check=False)
        assert out.returncode == 2 and f"pid {sleeper.pid}" in out.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    lmhpc("run", str(cfg_path))


# ------------------------------------------------------------------------------------------ secrets


def test_paths_named_like_tokens_are_not_redacted(tmp_path, cfg_path):
    cfg = load_config(cfg_path, ["pretrain.data.tokenizer=/models/tok.model", "dedup.quality_key=score",
                                 "executor.env.TOKENIZERS_PARALLELISM='false'"])
    saved = json.loads(dump_json(cfg))
    assert saved["pretrain"]["data"]["tokenizer"] == "/models/tok.model"
    assert saved["executor"]["env"]["TOKENIZERS_PARALLELISM"] == "false"
    assert saved["dedup"]["quality_key"] == "score"


@pytest.mark.parametrize("line", ["export WANDB_API_KEY=abc123", "HF_TOKEN='hf_xyz' python x.py",
                                  "export DB_PASSWORD=hunter2; echo ok"])
def test_literal_secret_in_setup_lines_is_refused(cfg_path, line):
    with pytest.raises(ConfigError, match=r"executor.setup\[0\].*literal secret"):
        load_config(cfg_path, [f"executor.setup=[{json.dumps(line)}]"])


def test_secret_references_in_setup_lines_are_redacted(cfg_path):
    cfg = load_config(cfg_path, ['executor.setup=["export WANDB_API_KEY=$(cat ~/.wandb_key)", "module load cuda"]'])
    saved = json.loads(dump_json(cfg))
    assert saved["executor"]["setup"] == ["export WANDB_API_KEY=<redacted>", "module load cuda"]
    assert cfg.executor.setup[0] == "export WANDB_API_KEY=$(cat ~/.wandb_key)"  # the job still runs it


# ------------------------------------------------------------------------------------------ overrides, limits


def test_list_override_by_index(tmp_path, cfg_path, corpus):
    cfg = load_config(cfg_path, [f"curate.inputs.0.path={corpus}/part-00[01].jsonl", "curate.inputs.0.weight=2"])
    assert cfg.curate.inputs[0].path.endswith("part-00[01].jsonl") and cfg.curate.inputs[0].weight == 2
    with pytest.raises(ConfigError, match=r"curate.inputs.3.*no item 3 in a list of 1"):
        load_config(cfg_path, ["curate.inputs.3.path=x"])


def test_signal_delay_must_fit_the_time_limit(cfg_path):
    with pytest.raises(ConfigError, match=r"executor.signal_delay_s.*time limit"):
        load_config(cfg_path, ["resources.curate.timeout_min=1", "executor.signal_delay_s=90"], executor="slurm")
    load_config(cfg_path, ["resources.curate.timeout_min=2", "executor.signal_delay_s=90"], executor="slurm")


def test_failed_stage_keeps_partial_stats(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=10, bad_lines=True)
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus, curate__max_bad_fraction=0.01))
    out = lmhpc("run", str(path), check=False)
    assert out.returncode != 0
    failed = json.loads((tmp_path / "runs" / "t" / "curate" / "stats.failed.json").read_text())
    assert "max_bad_fraction" in failed["error"]
    assert failed["stats"]["quarantined"] == 4 or failed["stats"].get("stats", {}).get("quarantined")
    assert not (tmp_path / "runs" / "t" / "curate" / "DONE").exists()


def test_unreadable_inputs_fail_before_anything_runs(tmp_path, corpus, cfg_path):
    (corpus / "README.md").write_text("# about this corpus\n")
    (corpus / "part-009.jsonl.gz").write_bytes(b"plain text, not gzip\n")
    data = yaml.safe_load(cfg_path.read_text())
    data["curate"]["inputs"][0]["path"] = str(corpus / "*")
    write_config(cfg_path, data)
    out = lmhpc("run", str(cfg_path), check=False)
    assert out.returncode == 2
    assert "curate.inputs[0].path" in out.stderr and "README.md" in out.stderr and "part-009.jsonl.gz" in out.stderr
    assert not (tmp_path / "runs" / "t" / "pipeline.json").exists()
