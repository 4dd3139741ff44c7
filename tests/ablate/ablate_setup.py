"""A tiny ablation set-up shared by the local and SLURM tests: a two-source corpus with short documents (that the
Gopher quality rules drop) and planted duplicates, held-out text, a multiple-choice task file, a tokenizer, and
the config of an ablation with every kind of variant."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.train.fixtures import WORDS, make_tokenizer, sample_texts

VARIANTS = ["baseline", "without_gopher_quality", "without_dedup", "only_a", "only_b", "mix_b_heavy"]


def _document(rng: np.random.Generator, sentences: int) -> str:
    lines = []
    for _ in range(sentences):
        start = int(rng.integers(0, len(WORDS)))
        n = int(rng.integers(8, 14))
        words = [WORDS[(start + 2 * j + int(rng.integers(0, 2))) % len(WORDS)] for j in range(n)]
        lines.append(" ".join(["the", *words[:-1], "and", words[-1]]).capitalize() + ".")
    return "\n".join(lines)


def write_corpus(folder: Path) -> dict[str, Path]:
    """Sources ``a`` and ``b``: long documents, short ones (under Gopher's 50 words) and exact duplicates."""
    rng = np.random.default_rng(7)
    paths = {}
    for source, n_docs in (("a", 40), ("b", 30)):
        docs = []
        for i in range(n_docs):
            short = i % 5 == 0
            docs.append({"id": f"{source}-{i}", "text": _document(rng, 2 if short else 8)})
        docs += [{"id": f"{source}-dup-{i}", "text": docs[i]["text"]} for i in (1, 2, 3, 4, 6, 7)]  # long ones
        (folder / source).mkdir(parents=True, exist_ok=True)
        path = folder / source / "part-000.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in docs))
        paths[source] = path
    return paths


def write_eval_files(folder: Path) -> None:
    (folder / "heldout.jsonl").write_text("".join(json.dumps({"text": t, "source": "held"}) + "\n"
                                                  for t in sample_texts(8, seed=11)))
    rng = np.random.default_rng(3)
    items = []
    for _ in range(12):
        start = int(rng.integers(0, len(WORDS) - 6))
        items.append({"context": " ".join(WORDS[start:start + 4]),
                      "choices": [" ".join(WORDS[start + 4:start + 6]), "cold grey", "seven tired"], "gold": 0})
    (folder / "task.jsonl").write_text("".join(json.dumps(d) + "\n" for d in items))


def ablation_config(root: Path, name: str = "ab", tokenizer: str = "", tasks: int = 2) -> dict:
    """The config (as data) of a tiny ablation over the corpus in ``root``; ``tokenizer``: a model file, else the
    run's tokenizer stage."""
    write_corpus(root / "corpus")
    write_eval_files(root)
    return {
        "run": {"name": name, "runs_dir": str(root / "runs"), "seed": 5, "stages": ["ablate"]},
        "wandb": {"mode": "disabled"},
        "resources": {"ablate": {"tasks": tasks, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 20}},
        "curate": {
            "inputs": [{"path": "corpus/a/*.jsonl", "source": "a"}, {"path": "corpus/b/*.jsonl", "source": "b"}],
            "filters": {"gopher_repetition": {"enabled": False}, "language": {"enabled": False},
                        "fineweb": {"enabled": False}, "c4": {"enabled": False}},
        },
        "dedup": {"minhash": {"enabled": False}},
        "ablate": {
            "without": ["gopher_quality"], "without_dedup": True, "sources": True,
            "mixes": {"b_heavy": {"a": 1, "b": 3}},
            "tokenizer": tokenizer,
            "probe": {"model": {"dim": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "max_seq_len": 64},
                      "train": {"steps": 4, "seq_len": 32, "micro_batch_size": 4, "device": "cpu",
                                "vocab_multiple_of": 32},
                      "optimizer": {"lr": 3e-3, "warmup_steps": 1}},
            "eval": {"tasks": [], "task_files": [{"name": "mine", "path": "task.jsonl"}],
                     "perplexity": {"texts": [{"path": "heldout.jsonl", "source": "held"}]}},
        },
    }


def tokenizer_model(folder: Path) -> Path:
    """A sentencepiece model over the corpus's words (``folder/tokenizer.model``, the stage's DONE marker)."""
    return make_tokenizer(folder)


def check_comparison(run_dir: Path) -> dict:
    """The checks every ablation run must pass; returns ``comparison.json``."""
    import math

    from lmhpc.ablate.compare import exceeds

    stage = run_dir / "ablate"
    assert (stage / "DONE").exists()
    comparison = json.loads((stage / "comparison.json").read_text())
    assert [v["name"] for v in comparison["variants"]] == VARIANTS
    by = {v["name"]: v for v in comparison["variants"]}
    assert [m["name"] for m in comparison["metrics"]] == ["held bpb", "mine acc", "mine acc_norm"]
    base = by["baseline"]
    # the variants differ in their data the way they should
    assert by["without_gopher_quality"]["docs"] > base["docs"]
    assert by["without_dedup"]["docs"] > base["docs"]
    assert set(by["only_a"]["sources"]) == {"a"} and set(by["only_b"]["sources"]) == {"b"}
    assert by["only_a"]["docs"] + by["only_b"]["docs"] == base["docs"]
    weights = {s: r["weight"] for s, r in by["mix_b_heavy"]["sources"].items()}
    assert weights == {"a": 0.25, "b": 0.75}
    assert by["without_dedup"]["dedup"] is None and base["dedup"]["dropped"]["exact"] == 12
    exceeding = []
    for v in comparison["variants"]:
        assert v["final_loss"] is not None and v["tokens"] > 0
        for metric, s in v["scores"].items():
            assert s["value"] is not None and s["stderr"] is not None, (v["name"], metric)
            if v["name"] == "baseline":
                assert "diff" not in s
                continue
            b = base["scores"][metric]
            assert s["diff"] == s["value"] - b["value"]
            assert math.isclose(s["diff_stderr"], math.hypot(s["stderr"], b["stderr"]))
            assert s["exceeds"] == exceeds(s["diff"], s["diff_stderr"])
            # the same documents and items for every probe: a paired error for every metric
            assert s["paired_stderr"] is not None and s["exceeds_paired"] == exceeds(s["diff"], s["paired_stderr"])
            if s["exceeds"]:
                exceeding.append((v["name"], metric))
    assert [(d["variant"], d["metric"]) for d in comparison["exceeding"]] == exceeding
    items = json.loads((stage / "variants" / "only_a" / "evaluate" / "items.json").read_text())
    assert len(items["perplexity"]["held"]) == 8 and len(items["tasks"]["mine"]["acc"]) == 12
    table = (stage / "comparison.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS)
    return comparison
