"""The runner: unit markers, finalize, accounting, stats.json/config.json/DONE, resume, requeue code."""

from __future__ import annotations

import json

import pytest

from lmhpc.config import load_config
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE, PreemptionFlag
from lmhpc.runner import AccountingError, check_accounting, merge_stats, run_stage
from tests.conftest import write_config
from tests.helpers import curate_config, tree_bytes, write_jsonl_corpus


def test_merge_stats_adds_and_merges():
    a = {"docs_in": 3, "dropped": {"x": 1}, "samples": [1], "name": "a", "flag": True}
    b = {"docs_in": 4, "dropped": {"x": 2, "y": 1}, "samples": [2], "name": "b", "flag": False}
    assert merge_stats(a, b) == {"docs_in": 7, "dropped": {"x": 3, "y": 1}, "samples": [1, 2], "name": "a",
                                 "flag": True}


def test_check_accounting():
    check_accounting({"docs_in": 5, "docs_out": 2, "quarantined": 1, "dropped": {"a": 2}}, "t")
    with pytest.raises(AccountingError, match="docs_in=5"):
        check_accounting({"docs_in": 5, "docs_out": 2, "quarantined": 1, "dropped": {"a": 1}}, "t")


@pytest.fixture
def curate_cfg(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=5, docs_per_file=20, bad_lines=True, gz=True)
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus, curate__max_bad_fraction=0.2))
    return path


def test_array_stage_in_process_writes_markers_and_stats(curate_cfg):
    cfg = load_config(curate_cfg)
    assert run_stage(cfg, "curate") == 0
    stage = cfg.run_dir / "curate"
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == 5 * 22  # 20 good + 2 bad lines per file
    assert stats["quarantined"] == 10
    assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())
    assert (stage / "DONE").exists()
    assert json.loads((stage / "config.json").read_text())["run"]["name"] == "t"
    assert len(list((stage / "_units").glob("*.json"))) == 5
    # a second run finds the stage complete and changes nothing
    before = tree_bytes(stage)
    assert run_stage(cfg, "curate") == 0
    assert tree_bytes(stage) == before


def test_tasks_then_finalize_match_single_process(curate_cfg, tmp_path):
    one = load_config(curate_cfg)
    run_stage(one, "curate")
    three = load_config(curate_cfg, ["run.name=three"])
    for t in range(3):
        assert run_stage(three, "curate", task=t, num_tasks=3) == 0
    assert not (three.run_dir / "curate" / "DONE").exists()
    assert run_stage(three, "curate", finalize=True) == 0
    assert tree_bytes(one.run_dir / "curate" / "data") == tree_bytes(three.run_dir / "curate" / "data")
    s1 = json.loads((one.run_dir / "curate" / "stats.json").read_text())
    s3 = json.loads((three.run_dir / "curate" / "stats.json").read_text())
    for key in ("docs_in", "docs_out", "quarantined", "dropped"):
        assert s1[key] == s3[key]


def test_finalize_refuses_missing_units(curate_cfg):
    cfg = load_config(curate_cfg)
    assert run_stage(cfg, "curate", task=0, num_tasks=2) == 0
    assert run_stage(cfg, "curate", finalize=True) == 1
    assert not (cfg.run_dir / "curate" / "DONE").exists()


def test_preemption_flag_saves_and_returns_requeue_code(curate_cfg, monkeypatch):
    cfg = load_config(curate_cfg)
    calls = {"n": 0}
    original = PreemptionFlag.is_set

    def flag_after_two_units(self):
        calls["n"] += 1
        return calls["n"] > 2 or original(self)

    monkeypatch.setattr(PreemptionFlag, "is_set", flag_after_two_units)
    assert run_stage(cfg, "curate") == REQUEUE_EXIT_CODE
    done_units = sorted((cfg.run_dir / "curate" / "_units").glob("*.json"))
    assert len(done_units) == 2 and not (cfg.run_dir / "curate" / "DONE").exists()
    monkeypatch.setattr(PreemptionFlag, "is_set", original)
    assert run_stage(cfg, "curate") == 0
    fresh = load_config(curate_cfg, ["run.name=fresh"])
    run_stage(fresh, "curate")
    assert tree_bytes(cfg.run_dir / "curate" / "data") == tree_bytes(fresh.run_dir / "curate" / "data")


def test_too_many_bad_records_fail_clearly(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=1, docs_per_file=5, bad_lines=True)
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, corpus, curate__max_bad_fraction=0.01))
    cfg = load_config(path)
    assert run_stage(cfg, "curate") == 1
    assert "max_bad_fraction" in caplog.text
    assert not (cfg.run_dir / "curate" / "DONE").exists()
    # nothing lost: the bad records are in the quarantine with reasons and locations
    q = (cfg.run_dir / "curate" / "quarantine" / "00000.jsonl").read_text().splitlines()
    reasons = sorted(json.loads(line)["reason"] for line in q)
    assert reasons == ["invalid_json", "missing_text"]


def test_input_glob_matching_nothing_fails_clearly(tmp_path, caplog):
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, tmp_path / "nothing-here"))
    cfg = load_config(path)
    assert run_stage(cfg, "curate") == 1
    assert "curate.inputs[0].path: no file matches" in caplog.text
