"""The local executor end to end through the CLI: tasks as processes, status, resume, real signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.timing import read_events, timing_rows
from tests.conftest import write_config
from tests.helpers import curate_config, tree_bytes, write_jsonl_corpus


def lmhpc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_run_with_tasks_matches_one_task_and_status(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=5, docs_per_file=30, gz=True)
    cfg = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus))
    out = lmhpc("run", str(cfg), "resources.curate.tasks=3")
    assert "curate: done" in out.stdout
    lmhpc("run", str(cfg), "run.name=single", "resources.curate.tasks=1")
    runs = tmp_path / "runs"
    assert tree_bytes(runs / "t" / "curate" / "data") == tree_bytes(runs / "single" / "curate" / "data")
    status = json.loads(lmhpc("status", str(runs / "t"), "--json").stdout)
    assert status == [{"stage": "curate", "state": "done", "job_ids": [], "sacct": {}}]
    again = lmhpc("run", str(cfg), "resources.curate.tasks=3")
    assert "already complete" in again.stdout
    timing = json.loads(lmhpc("status", str(runs / "t"), "--timing", "--json").stdout)
    assert [r["stage"] for r in timing] == ["curate"]
    assert timing[0]["run_s"] > 0 and timing[0]["start_to_first_unit_s"] >= 0 and timing[0]["preemptions"] == []
    assert "to 1st unit" in lmhpc("status", str(runs / "t"), "--timing").stdout


def test_failed_stage_reports_failed(tmp_path):
    corpus = tmp_path / "broken"
    corpus.mkdir()
    (corpus / "part-000.jsonl").write_text("{not json\n" * 200)  # readable, but every record is bad
    cfg = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus))
    out = lmhpc("run", str(cfg), check=False)
    assert out.returncode != 0
    assert "FAILED" in out.stdout
    status = json.loads(lmhpc("status", str(tmp_path / "runs" / "t"), "--json").stdout)
    assert status[0]["state"] == "failed"


def test_real_signal_saves_then_resumes_to_identical_output(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=24, docs_per_file=1500)
    cfg = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus))
    units = tmp_path / "runs" / "t" / "curate" / "_units"
    proc = subprocess.Popen([sys.executable, "-m", "lmhpc", "stage", "curate", str(cfg), "--task", "0",
                             "--num-tasks", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (units.exists() and any(units.glob("*.json"))):
        time.sleep(0.005)
    proc.send_signal(signal.SIGUSR2)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == REQUEUE_EXIT_CODE, log
    assert "preempted" in log
    partial = len(list(units.glob("*.json")))
    assert 1 <= partial < 24
    # the requeued attempt skips what is done and finishes
    lmhpc("stage", "curate", str(cfg), "--task", "0", "--num-tasks", "1")
    lmhpc("stage", "curate", str(cfg), "--finalize")
    events = [e["event"] for e in read_events(tmp_path / "runs" / "t" / "curate")]
    assert events[:5] == ["start", "first_unit", "saved", "requeued", "end"], events
    assert events[-2:] == ["start", "end"]  # the finalize step
    row = timing_rows(tmp_path / "runs" / "t", ["curate"])[0]
    assert len(row["preemptions"]) == 1
    save_s, requeue_s = row["preemptions"][0]["save_s"], row["preemptions"][0]["requeue_s"]
    assert 0 <= save_s < 60 and requeue_s >= 0
    lmhpc("run", str(cfg), "run.name=clean")
    runs = tmp_path / "runs"
    assert tree_bytes(runs / "t" / "curate" / "data") == tree_bytes(runs / "clean" / "curate" / "data")


def test_curate_tools_are_lmhpc_subcommands(tmp_path):
    corpus = tmp_path / "ref.txt"
    corpus.write_text("the river runs to the sea\nthe sea is wide and the river is long\n" * 20)
    lmhpc("curate", "ngram-lm", "train", "--order", "2", "--out", str(tmp_path / "ref.arpa"), str(corpus))
    assert "\\data\\" in (tmp_path / "ref.arpa").read_text()  # an ARPA file
    out = lmhpc("curate", "nope", check=False)
    assert out.returncode == 2 and "rethreshold" in out.stderr
