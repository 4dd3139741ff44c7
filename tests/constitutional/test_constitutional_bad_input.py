"""Bad input to the Constitutional AI stages fails before any work, naming the config key: a broken constitution,
an empty prompt file, an unknown principle, bad settings. Bad prompt lines are quarantined by reason."""

from __future__ import annotations

import json

import pytest

from lmhpc.config import ConfigError
from lmhpc.constitutional import revise
from lmhpc.constitutional.constitution import SHIPPED_CONSTITUTION, SHIPPED_PROMPTS
from lmhpc.pipeline import preflight
from lmhpc.runner import run_stage
from lmhpc.stages import STAGES
from tests.constitutional.conftest import write_run_config

GOOD = json.loads(SHIPPED_CONSTITUTION.read_text())


def constitution(tmp_path, name: str, data) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def missing_field():
    data = json.loads(json.dumps(GOOD))
    del data["principles"][3]["revision_request"]
    return data


def repeated_id():
    data = json.loads(json.dumps(GOOD))
    data["principles"][1]["id"] = data["principles"][0]["id"]
    return data


@pytest.mark.parametrize(("name", "data", "message"), [
    ("broken", "{not json", "not a readable JSON constitution"),
    ("empty", {"principles": []}, "non-empty list 'principles'"),
    ("missing", missing_field(), "principles[3].revision_request must be a non-empty string"),
    ("repeated", repeated_id(), "principle ids must be distinct"),
    ("extra", {"principles": [{**GOOD["principles"][0], "weight": 2}]}, "unknown fields ['weight']"),
])
@pytest.mark.parametrize("stage", ["constitutional", "ai_feedback"])
def test_a_bad_constitution_fails_before_work_naming_the_key(tmp_path, model_dir, name, data, message, stage):
    path = constitution(tmp_path, name, data)
    cfg = write_run_config(tmp_path, name, [stage], {stage: {"init_from": str(model_dir), "constitution": path,
                                                             "prompts": [str(SHIPPED_PROMPTS)]}})
    problems = preflight_problems(cfg, stage)
    assert len(problems) == 1 and problems[0].startswith(f"{stage}.constitution: ") and message in problems[0]
    with pytest.raises(ConfigError, match=f"{stage}.constitution") as e:
        run_stage(cfg, stage)
    assert message in str(e.value)
    assert not (cfg.run_dir / stage / "chunks").exists()  # nothing generated


def preflight_problems(cfg, stage) -> list[str]:
    """The stage's preflight problems; the pipeline refuses to launch on them, naming the first one's key."""
    problems = STAGES[stage].run_preflight(cfg)
    with pytest.raises(ConfigError, match=problems[0].split(":", 1)[0].replace(".", r"\.").replace("[", r"\[")):
        preflight(cfg, [stage])
    return problems


@pytest.mark.parametrize("stage", ["constitutional", "ai_feedback"])
def test_an_unknown_principle_fails_naming_it(tmp_path, model_dir, stage):
    cfg = write_run_config(tmp_path, "unknown", [stage], {stage: {
        "init_from": str(model_dir), "principles": ["harm", "kindness"], "prompts": [str(SHIPPED_PROMPTS)]}})
    problems = preflight_problems(cfg, stage)
    assert len(problems) == 1 and problems[0].startswith(f"{stage}.principles[1]: unknown principle 'kindness'")
    with pytest.raises(ConfigError, match=rf"{stage}\.principles\[1\].*'kindness'"):
        run_stage(cfg, stage)


@pytest.mark.parametrize("stage", ["constitutional", "ai_feedback"])
def test_a_prompt_file_without_a_usable_prompt_fails_naming_the_key(tmp_path, model_dir, stage):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n{"text": "no prompt here"}\n{broken\n')
    for files, name in (([empty], "empty"), ([bad, empty], "bad"), ([tmp_path / "absent.jsonl"], "absent")):
        cfg = write_run_config(tmp_path, name, [stage], {stage: {"init_from": str(model_dir),
                                                                 "prompts": [str(f) for f in files]}})
        problems = preflight_problems(cfg, stage)
        assert len(problems) == 1 and problems[0].startswith(f"{stage}.prompts"), problems
        with pytest.raises(ConfigError, match=rf"{stage}\.prompts"):
            run_stage(cfg, stage)


def test_bad_prompt_lines_are_quarantined_by_reason(tmp_path, model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join([json.dumps({"prompt": "How do I pick a lock?"}), '{"prompt": "  "}', "{oops",
                                  json.dumps({"question": "no prompt field"}), json.dumps({"prompt": 3}),
                                  json.dumps({"prompt": "How do I pick a lock?"}),
                                  json.dumps({"prompt": "Write an insult."})]) + "\n")
    cfg = write_run_config(tmp_path, "lines", ["constitutional"], {"constitutional": {
        "init_from": str(model_dir), "prompts": [str(prompts)], "rounds": 1, "sampling": {"max_new_tokens": 4}}})
    assert run_stage(cfg, "constitutional") == 0
    stage = cfg.run_dir / "constitutional"
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == 2
    assert stats["prompt_selection"]["bad_prompt_lines"] == {"empty_prompt": 1, "malformed_line": 1,
                                                             "missing_prompt": 2, "duplicate_prompt": 1}
    entries = [json.loads(line) for line in (stage / "quarantine" / "prompts.jsonl").read_text().splitlines()]
    assert [(e["reason"], e["location"].rsplit(":", 1)[1]) for e in entries] == [
        ("empty_prompt", "2"), ("malformed_line", "3"), ("missing_prompt", "4"), ("missing_prompt", "5"),
        ("duplicate_prompt", "6")]


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("constitutional", "rounds", 0, "constitutional.rounds"),
    ("constitutional", "chunk_size", 0, "constitutional.chunk_size"),
    ("constitutional", "sampling", {"top_p": 0}, "constitutional.sampling.top_p"),
    ("ai_feedback", "sampling", {"temperature": 0}, "ai_feedback.sampling.temperature"),
    ("ai_feedback", "tie_margin", 0.5, "ai_feedback.tie_margin"),
    ("ai_feedback", "principles", ["harm", "harm"], "ai_feedback.principles"),
])
def test_bad_settings_fail_at_load_naming_the_key(tmp_path, section, key, value, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        write_run_config(tmp_path, "settings", [section], {section: {key: value, "prompts": ["p.jsonl"]}})


def test_ai_feedback_without_prompts_needs_the_constitutional_stage(tmp_path):
    with pytest.raises(ConfigError, match=r"'ai_feedback\.prompts'.*: empty, so the prompts are the constitutional"):
        write_run_config(tmp_path, "alone", ["ai_feedback"], {"ai_feedback": {"init_from": "model"}})


def test_a_revision_that_repeats_the_prompt_or_a_request_is_degenerate():
    row = revise._Row(0, "How do I pick a lock?", rounds=[{"critique_request": "Point out harm.",
                                                           "revision_request": "Rewrite it safely."}])
    assert revise._degenerate("", row) == "empty_revision"
    assert revise._degenerate("how do I  pick a LOCK?", row) == "revision_repeats_prompt"
    assert revise._degenerate("Rewrite it safely.", row) == "revision_repeats_request"
    assert revise._degenerate("I cannot help with that.", row) is None


@pytest.mark.parametrize(("stages", "section", "reads"), [
    (["pretrain", "constitutional", "sft", "ai_feedback"], {}, ("sft", "constitutional")),
    (["pretrain", "constitutional", "ai_feedback"], {}, ("pretrain", "constitutional")),
    (["pretrain", "constitutional", "ai_feedback"], {"init_from": "model"}, ("constitutional",)),
    (["pretrain", "constitutional", "sft", "ai_feedback"], {"prompts": ["p.jsonl"]}, ("sft",)),
])
def test_ai_feedback_reads_the_latest_model_stage_and_the_prompts_it_needs(tmp_path, stages, section, reads):
    cfg = write_run_config(tmp_path, "reads", stages, {"ai_feedback": section})
    assert STAGES["ai_feedback"].reads_for(cfg) == reads
    assert STAGES["constitutional"].reads_for(cfg) == ("pretrain",)
