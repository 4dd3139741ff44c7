"""Our task formats build the same requests, choices and gold answers as lm-evaluation-harness's own task
configs, on the first documents of each benchmark in the data wheel."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmhpc.evaluate.harness_tasks import HARNESS_CONFIGS, harness_config, harness_doc
from lmhpc.evaluate.tasks import TASKS, BadTaskItem, file_item, mc_item, read_task_file


def harness_task(name: str, docs_file: Path):
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(harness_config(name))
    cfg.pop("tag", None)
    cfg.update(dataset_path="json", dataset_name=None, training_split=None, test_split=None,
               validation_split="validation", dataset_kwargs={"data_files": {"validation": str(docs_file)}})
    return ConfigurableTask(config=cfg)


def test_every_task_has_a_harness_config():
    assert set(HARNESS_CONFIGS) == set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_requests_match_the_harness(name, data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = TASKS[name]
    docs = task.items(data_dir)[:12]
    harness_docs = [harness_doc(name, d) for d in docs]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in harness_docs))
    harness = harness_task(name, path)
    for doc, hdoc in zip(docs, harness.validation_docs()):
        ours = task.to_item(doc)
        requests = harness.construct_requests(doc=hdoc, ctx=harness.fewshot_context(hdoc, 0))
        assert [r.args for r in requests] == ours.requests
        choices = harness.doc_to_choice(hdoc)
        assert choices == ours.choices
        gold = harness.doc_to_text(hdoc) if harness.multiple_input else harness.doc_to_target(hdoc)
        assert (choices.index(gold) if isinstance(gold, str) else gold) == ours.gold
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_bad_items_are_named():
    with pytest.raises(BadTaskItem, match="empty choice list"):
        mc_item("q", [], 0)
    with pytest.raises(BadTaskItem, match="outside"):
        mc_item("q", ["a", "b"], 2)
    with pytest.raises(BadTaskItem, match="missing field 'gold'"):
        file_item({"context": "q", "choices": ["a"]})
    with pytest.raises(BadTaskItem, match="list of strings"):
        file_item({"context": "q", "choices": "ab", "gold": 0})
    with pytest.raises(BadTaskItem, match="integer"):
        file_item({"context": "q", "choices": ["a"], "gold": True})


def test_task_file_lines(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"context": "q", "choices": ["a", "b"], "gold": 1}\n\n{"context": \n[1, 2]\n')
    lines = read_task_file(path)
    assert lines[0] == {"context": "q", "choices": ["a", "b"], "gold": 1}
    assert isinstance(lines[1], BadTaskItem) and "t.jsonl:3: malformed JSON" in str(lines[1])
    assert isinstance(lines[2], BadTaskItem) and "JSON object" in str(lines[2])
