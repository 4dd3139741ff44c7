"""The curate stage's check before submission: input files that cannot be read are named with their key."""

from __future__ import annotations

from pathlib import Path

from curate_corpus import prose, write_jsonl

from lmhpc.config import load_config
from lmhpc.curate.preflight import preflight


def test_preflight_names_each_bad_file_and_the_key(tmp_path: Path, make_config) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": prose(1)}])
    (tmp_path / "in" / "README.md").write_text("# About this corpus\n")
    (tmp_path / "in" / "broken.jsonl.gz").write_bytes(b"plain text")
    cfg = load_config(make_config({"run": {"stages": ["curate"]}, "wandb": {"mode": "disabled"},
                                   "curate": {"inputs": [{"path": "in/a.jsonl"}, {"path": "in/*"},
                                                         {"path": "missing/*.jsonl"}]}}))
    problems = preflight(cfg)
    assert len(problems) == 3, problems
    readme, broken, missing = problems
    assert readme.startswith("curate.inputs[1].path: ") and "README.md" in readme
    assert broken.startswith("curate.inputs[1].path: ") and "broken.jsonl.gz" in broken
    assert missing.startswith("curate.inputs[2].path: no file matches") and "missing" in missing


def test_preflight_of_good_inputs_is_empty(tmp_path: Path, make_config) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "a", "text": prose(1)}])
    cfg = load_config(make_config({"run": {"stages": ["curate"]}, "wandb": {"mode": "disabled"},
                                   "curate": {"inputs": [{"path": "in/*.jsonl"}]}}))
    assert preflight(cfg) == []
