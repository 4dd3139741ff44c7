"""Fixtures of the tokenizer tests: a small real corpus laid out as the dedup stage's output, and a tokenizer
trained on it once per session."""

from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import yaml

from lmhpc.data.documents import Document
from lmhpc.data.writers import ShardWriter

HERE = Path(__file__).resolve().parent
LICENSES = Path("/usr/share/common-licenses")

TOKENIZER_SECTION = {
    "vocab_size": 1000,
    "character_coverage": 0.995,
    "sample_mb": 0.6,
    "user_tokens": ["<|im_start|>", "<|im_end|>"],
    "control_tokens": ["<|endoftext|>"],
    "num_threads": 2,
    "read_workers": 1,
    "analysis": {"heldout_mb": 0.03, "per_source_vocab_size": 800, "top_tokens": 5},
}


def corpus() -> list[Document]:
    """Real text of three sources: Python source code, multilingual prose, license texts."""
    docs: list[Document] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    code = [p for p in sorted(stdlib.glob("*.py")) if 2_000 < p.stat().st_size < 40_000][:45]
    for p in code:
        docs.append(Document(id=f"code/{p.name}", text=p.read_text(encoding="utf-8", errors="replace"),
                             source="code", metadata={}))
    paragraphs = [json.loads(line) for line in (HERE / "multilingual.jsonl").read_text().splitlines()]
    by_lang: dict[str, list[str]] = {}
    for par in paragraphs:
        by_lang.setdefault(par["language"], []).append(par["text"])
    for round_ in range(12):
        for lang in sorted(by_lang):
            texts = by_lang[lang]
            text = "\n\n".join(texts[(round_ + k) % len(texts)] for k in range(1 + round_ % 3))
            docs.append(Document(id=f"prose/{lang}/{round_}", text=text, source="prose",
                                 metadata={"language": lang}))
    licenses = sorted(p for p in LICENSES.glob("*") if p.is_file()) if LICENSES.is_dir() else []
    if not licenses:
        licenses = [stdlib / "LICENSE.txt"]
    for p in licenses:
        docs.append(Document(id=f"license/{p.name}", text=p.read_text(encoding="utf-8", errors="replace"),
                             source="license", metadata={"language": "en"}))
    docs.append(Document(id="prose/empty", text="", source="prose", metadata={"language": "en"}))
    docs.append(Document(id="code/empty", text="", source="code", metadata={}))
    return docs


def write_dedup_output(run_dir: Path, docs: list[Document], shards: int = 4) -> list[Path]:
    """Lay ``docs`` out as a complete dedup stage: ``dedup/data/part-XXXXX-00000.jsonl.zst`` and DONE.
    Documents are dealt round-robin, so every shard mixes sources."""
    data = run_dir / "dedup" / "data"
    paths: list[Path] = []
    for k in range(shards):
        with ShardWriter(data, f"part-{k:05d}", max_bytes=64 << 20) as writer:
            for doc in docs[k::shards]:
                writer.write(doc)
        paths += writer.close()
    (run_dir / "dedup" / "DONE").write_text("{}\n")
    return paths


@pytest.fixture(scope="session")
def corpus_docs() -> list[Document]:
    return corpus()


def config_data(runs_dir: Path, name: str = "t", **sections: dict) -> dict:
    data = {
        "run": {"name": name, "runs_dir": str(runs_dir), "seed": 7, "stages": ["tokenizer", "tokenize"]},
        "wandb": {"mode": "disabled"},
        "curate": {"inputs": [{"path": "unused", "source": "code", "weight": 1.0},
                              {"path": "unused", "source": "prose", "weight": 2.0}]},
        "tokenizer": dict(TOKENIZER_SECTION),
        "tokenize": {"batch_docs": 16, "num_threads": 2},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return data


def write_config(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


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
