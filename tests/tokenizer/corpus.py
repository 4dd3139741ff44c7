"""The tokenizer tests' data: a small real corpus laid out as the dedup stage's output, and their configs."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

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
