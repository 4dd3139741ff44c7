"""Fixtures of the tokenizer tests: the corpus, and a tokenizer trained on it once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lmhpc.data.documents import Document
from tests.tokenizer.corpus import config_data, corpus, write_config, write_dedup_output


@pytest.fixture(scope="session")
def corpus_docs() -> list[Document]:
    return corpus()


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_docs) -> Path:
    """A run folder with the dedup output and a completed tokenizer stage (trained once per session)."""
    from lmhpc.config import load_config
    from lmhpc.runner import run_stage

    base = tmp_path_factory.mktemp("trained")
    cfg_path = write_config(base / "config.yaml", config_data(base / "runs"))
    cfg = load_config(cfg_path)
    write_dedup_output(cfg.run_dir, corpus_docs)
    assert run_stage(cfg, "tokenizer") == 0
    return cfg.run_dir


@pytest.fixture
def tokenize_run(tmp_path, trained_run):
    """``tokenize_run(name, shards=4, **sections) -> RunConfig``: a fresh run folder holding the session's
    dedup output and tokenizer, with the tokenize stage not yet run."""
    from lmhpc.config import load_config

    def make(name: str = "t", **sections: dict):
        cfg_path = write_config(tmp_path / f"{name}.yaml", config_data(tmp_path / "runs", name, **sections))
        cfg = load_config(cfg_path)
        for stage in ("dedup", "tokenizer"):
            shutil.copytree(trained_run / stage, cfg.run_dir / stage)
        return cfg

    return make
