"""The constitutional stage end to end on a tiny model: the exact output formats, every prompt accounted for,
the same files for the same seed, after a preemption, and over any number of array tasks."""

from __future__ import annotations

import json
import os
import signal

import pytest

from lmhpc.constitutional import revise
from lmhpc.constitutional.constitution import SHIPPED_CONSTITUTION
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.runner import run_stage
from tests.constitutional.conftest import stage_files, write_run_config

pytestmark = pytest.mark.slow


def config(base, name, model_dir, **kw):
    section = {"init_from": str(model_dir), "max_prompts": 10, "chunk_size": 4, "rounds": 2,
               "sampling": {"max_new_tokens": 12}, **kw}
    return write_run_config(base, name, ["constitutional"], {"constitutional": section})


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model_dir):
    """One clean run of the stage."""
    base = tmp_path_factory.mktemp("cai")
    cfg = config(base, "clean", model_dir)
    assert run_stage(cfg, "constitutional") == 0
    return cfg.run_dir / "constitutional"


def test_outputs_have_the_exact_formats_and_account_for_every_prompt(clean):
    prompts = [json.loads(line) for line in (clean / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == 10 and [p["index"] for p in prompts] == list(range(10))
    records = [json.loads(line) for line in (clean / "revisions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in records] == [p["prompt"] for p in prompts]
    ok = [r for r in records if r["status"] == "ok"]
    sft = [json.loads(line) for line in (clean / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == len(ok)
    for example, record in zip(sft, ok):
        assert example == {"messages": [{"role": "user", "content": record["prompt"]},
                                        {"role": "assistant", "content": record["final_revision"]}]}
        assert example["messages"][1]["content"].strip()
        assert [r["round"] for r in record["rounds"]] == [1, 2]
        assert record["final_revision"] == record["rounds"][-1]["revision"]
        for step in record["rounds"]:
            assert set(step) >= {"principle", "critique_request", "critique", "revision_request", "revision"}
    principles = {p["id"]: p for p in json.loads(SHIPPED_CONSTITUTION.read_text())["principles"]}
    for record in records:
        for step in record["rounds"]:
            assert step["critique_request"] == principles[step["principle"]]["critique_request"]
            assert step["revision_request"] == principles[step["principle"]]["revision_request"]
    stats = json.loads((clean / "stats.json").read_text())
    assert stats["docs_in"] == 10 and stats["docs_out"] == len(sft) == stats["sft_examples"]
    bad = [r for r in records if r["status"] != "ok"]
    assert stats["quarantined"] == len(bad) == sum(stats["quarantined_by_reason"].values())
    if bad:
        entries = [json.loads(line) for line in (clean / "quarantine" / "generations.jsonl").read_text().splitlines()]
        assert [e["reason"] for e in entries] == [r["status"] for r in bad]
    assert stats["generated_tokens"] > 0


def test_the_same_seed_gives_the_same_files_and_another_seed_others(clean, tmp_path, model_dir):
    again = config(tmp_path, "clean", model_dir)  # the same config in another folder
    assert run_stage(again, "constitutional") == 0
    assert stage_files(again.run_dir / "constitutional") == stage_files(clean)
    other = write_run_config(tmp_path, "seeded", ["constitutional"], {"constitutional": {
        "init_from": str(model_dir), "max_prompts": 10, "chunk_size": 4, "rounds": 2,
        "sampling": {"max_new_tokens": 12}}}, run={"seed": 12})
    assert run_stage(other, "constitutional") == 0
    assert (other.run_dir / "constitutional" / "sft.jsonl").read_bytes() != (clean / "sft.jsonl").read_bytes()


def test_array_tasks_give_the_files_of_one_process(clean, tmp_path, model_dir):
    cfg = config(tmp_path, "clean", model_dir)
    for task in (1, 0):
        assert run_stage(cfg, "constitutional", task=task, num_tasks=2) == 0
    assert not (cfg.run_dir / "constitutional" / "DONE").exists()
    assert run_stage(cfg, "constitutional", finalize=True) == 0
    assert stage_files(cfg.run_dir / "constitutional") == stage_files(clean)


def test_preemption_between_units_and_between_rounds_resumes_to_the_same_files(clean, tmp_path, model_dir,
                                                                                monkeypatch):
    """A preemption signal after the first unit stops the task before the next one; one in the middle of a unit
    (before its second round) stops it there, and the unit is redone whole. Each rerun resumes and the files are
    those of the clean run."""
    cfg = config(tmp_path, "clean", model_dir)
    stage = cfg.run_dir / "constitutional"
    real = revise.process_unit

    def signal_after_first_unit(ctx, index, unit):
        out = real(ctx, index, unit)
        os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(revise, "process_unit", signal_after_first_unit)
    assert run_stage(cfg, "constitutional") == REQUEUE_EXIT_CODE
    assert sorted(p.name for p in (stage / "_units").iterdir()) == ["000000.json"]
    assert not (stage / "DONE").exists()

    calls = {"n": 0}
    real_fitting = revise._fitting

    def signal_in_round_one(*args, **kw):  # the second check of a unit's first round: its revision step
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real_fitting(*args, **kw)

    monkeypatch.setattr(revise, "process_unit", real)
    monkeypatch.setattr(revise, "_fitting", signal_in_round_one)
    assert run_stage(cfg, "constitutional") == REQUEUE_EXIT_CODE
    assert sorted(p.name for p in (stage / "_units").iterdir()) == ["000000.json"]  # unit 1 stopped before round 2
    assert (stage / "chunks" / "000001.revisions.jsonl").exists() is False

    monkeypatch.setattr(revise, "_fitting", real_fitting)
    assert run_stage(cfg, "constitutional") == 0
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == 10
    assert stage_files(stage) == stage_files(clean)
