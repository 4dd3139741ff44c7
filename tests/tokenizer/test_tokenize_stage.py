"""The tokenize stage: Megatron .bin/.idx per source, read back through megatron-core (IndexedDataset,
GPTDataset, BlendedDataset), the blend file, accounting, rank-count invariance and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from lmhpc.data.documents import Document
from lmhpc.runner import run_stage
from lmhpc.tokenizer import indexed
from tests.tokenizer.corpus import write_dedup_output

SOURCES = ("code", "license", "prose")


def outputs_of(stage_dir: Path) -> dict[str, bytes]:
    """Every .bin/.idx under the stage folder, by relative path."""
    return {str(p.relative_to(stage_dir)): p.read_bytes() for p in sorted(stage_dir.rglob("*"))
            if p.suffix in (".bin", ".idx") and not p.name.startswith(".")}


def expected_docs(corpus_docs, shards: int = 4) -> dict[str, list[str]]:
    """The non-empty texts per source in output order: shard (unit) order, then order within the shard."""
    out: dict[str, list[str]] = {s: [] for s in SOURCES}
    for k in range(shards):
        for doc in corpus_docs[k::shards]:
            if doc.text:
                out[doc.source].append(doc.text)
    return out


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory, trained_run):
    """One completed tokenize run (per-source output), shared by the read-only tests below."""
    import shutil

    from lmhpc.config import load_config
    from tests.tokenizer.corpus import config_data, write_config

    base = tmp_path_factory.mktemp("tokenized")
    cfg = load_config(write_config(base / "c.yaml", config_data(base / "runs")))
    for stage in ("dedup", "tokenizer"):
        shutil.copytree(trained_run / stage, cfg.run_dir / stage)
    assert run_stage(cfg, "tokenize") == 0
    return cfg


def test_every_document_is_encoded_with_eod(tokenized, corpus_docs):
    stage = tokenized.run_dir / "tokenize"
    sp = spm.SentencePieceProcessor(model_file=str(tokenized.run_dir / "tokenizer" / "tokenizer.model"))
    expected = expected_docs(corpus_docs)
    for source in SOURCES:
        reader = indexed.IndexedDatasetReader(stage / source)
        assert reader.index.dtype == np.uint16  # vocab 1000 < 65500
        assert len(reader) == len(expected[source])
        for i, text in enumerate(expected[source]):
            ids = reader[i].tolist()
            assert ids[-1] == sp.eos_id() and sp.eos_id() not in ids[:-1]
            assert ids[:-1] == sp.encode(text)
            assert sp.decode(ids[:-1]) == text
    assert not (stage / "shards").exists()  # parts are gone once merged


def test_stats_account_for_every_document(tokenized, corpus_docs):
    stats = json.loads((tokenized.run_dir / "tokenize" / "stats.json").read_text())
    assert stats["docs_in"] == len(corpus_docs)
    assert stats["dropped"] == {"empty_text": 2}
    assert stats["quarantined"] == 0
    assert stats["docs_out"] == len(corpus_docs) - 2
    assert stats["per_source"]["code"]["dropped"] == {"empty_text": 1}
    total = sum(o["tokens"] for o in stats["outputs"].values())
    assert stats["tokens"] == total
    analysis = stats["analysis"]
    assert analysis["total"]["tokens"] == total - stats["docs_out"]  # the analysis does not count EODs
    assert analysis["total"]["bytes"] == sum(len(d.text.encode()) for d in corpus_docs)
    assert set(analysis["by_source"]) == set(SOURCES)
    assert {"ja", "zh", "en", "unknown"} <= set(analysis["by_language"])
    assert sum(r["docs"] for r in analysis["by_language"].values()) == stats["docs_out"]
    report = (tokenized.run_dir / "tokenize" / "analysis.md").read_text()
    assert "Tokens per source" in report and "| lang:zh |" in report


def test_megatron_indexed_dataset_reads_the_outputs(tokenized):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    stage = tokenized.run_dir / "tokenize"
    for source in SOURCES:
        ours = indexed.IndexedDatasetReader(stage / source)
        theirs = IndexedDataset(str(stage / source))
        assert len(theirs) == len(ours)
        assert theirs.sequence_lengths.tolist() == ours.index.sequence_lengths.tolist()
        assert theirs.document_indices.tolist() == list(range(len(ours) + 1))
        for i in range(0, len(ours), 7):
            assert theirs[i].tolist() == ours[i].tolist()


def test_blend_file(tokenized):
    stage = tokenized.run_dir / "tokenize"
    blend = json.loads((stage / "blend.json").read_text())
    stats = json.loads((stage / "stats.json").read_text())
    weights = blend["data_path"][0::2]
    prefixes = blend["data_path"][1::2]
    assert prefixes == [str(stage / s) for s in SOURCES]
    assert abs(sum(weights) - 1) < 1e-12
    # natural mix: tokens x source weight (prose has weight 2 in the curate inputs, the others 1)
    raw = {s: stats["outputs"][s]["tokens"] * (2.0 if s == "prose" else 1.0) for s in SOURCES}
    for s, w in zip(SOURCES, weights):
        assert w == pytest.approx(raw[s] / sum(raw.values()))
    assert (stage / "data_args.txt").read_text().split() == [str(x) for x in blend["data_path"]]
    assert blend["data_path_relative"][1::2] == list(SOURCES)
    assert blend["dtype"] == "uint16" and blend["eod_id"] == 2 and blend["vocab_size"] == 1000


def _gpt_config(run_dir: Path, data_path: list, seq: int = 64):
    from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
    from megatron.core.datasets.utils import get_blend_from_list
    from megatron.core.tokenizers import MegatronTokenizer

    tok = MegatronTokenizer.from_pretrained(str(run_dir / "tokenizer" / "tokenizer.model"))
    return GPTDatasetConfig(random_seed=1, sequence_length=seq, blend=get_blend_from_list([str(x) for x in data_path]),
                            split="100,0,0", tokenizer=tok, reset_position_ids=False, reset_attention_mask=False,
                            eod_mask_loss=False, path_to_cache=None, mid_level_dataset_surplus=0.005)


def test_gpt_dataset_samples_are_our_tokens(tokenized):
    """megatron-core's GPTDataset and BlendedDataset, built from blend.json, serve exactly our tokens."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset

    stage = tokenized.run_dir / "tokenize"
    blend = json.loads((stage / "blend.json").read_text())
    seq = 64
    config = _gpt_config(tokenized.run_dir, blend["data_path"], seq)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [600, 0, 0], lambda: True, config).build()
    shares = np.bincount(train.dataset_index, minlength=3) / len(train.dataset_index)
    assert shares == pytest.approx(blend["data_path"][0::2], abs=0.02)
    for ds_id, gpt in enumerate(train.datasets):
        ours = indexed.IndexedDatasetReader(stage / SOURCES[ds_id])
        for i in (0, 1, len(gpt) // 2, len(gpt) - 1):
            sample = gpt[i]
            j = gpt.shuffle_index[i]
            (beg, off_beg), (end, off_end) = gpt.sample_index[j], gpt.sample_index[j + 1]
            docs = [ours[int(gpt.document_index[k])] for k in range(beg, end + 1)]
            if beg == end:
                expected = docs[0][off_beg:off_end + 1]
            else:
                expected = np.concatenate([docs[0][off_beg:], *docs[1:-1], docs[-1][:off_end + 1]])
            got = np.concatenate([sample["tokens"].numpy(), sample["labels"].numpy()[-1:]])
            assert got.tolist() == expected.tolist()
            assert len(sample["tokens"]) == seq


def test_kept_shards_blend_splits_each_source_by_tokens(tokenize_run, corpus_docs):
    cfg = tokenize_run("shards", tokenize={"output": "shards", "blend_mix": "weights",
                                           "blend_weights": {"code": 1.0, "license": 1.0, "prose": 2.0}})
    assert run_stage(cfg, "tokenize") == 0
    stage = cfg.run_dir / "tokenize"
    blend = json.loads((stage / "blend.json").read_text())
    assert blend["sources"]["prose"]["weight"] == pytest.approx(0.5)
    assert blend["sources"]["code"]["weight"] == pytest.approx(0.25)
    prefixes = blend["data_path_relative"][1::2]
    assert all(p.startswith("shards/") for p in prefixes) and len(prefixes) > 3
    for w, p in zip(blend["data_path"][0::2], blend["data_path"][1::2]):
        source = Path(p).parent.name
        tokens = indexed.read_index(f"{p}.idx").num_tokens
        assert w == pytest.approx(blend["sources"][source]["weight"] * tokens / blend["sources"][source]["tokens"])
    texts = [indexed.IndexedDatasetReader(stage / p) for p in blend["sources"]["prose"]["prefixes"]]
    assert sum(len(r) for r in texts) == len(expected_docs(corpus_docs)["prose"])


def test_int32_when_asked_and_megatron_reads_it(tokenize_run):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    cfg = tokenize_run("wide", tokenize={"dtype": "int32"})
    assert run_stage(cfg, "tokenize") == 0
    idx = (cfg.run_dir / "tokenize" / "code.idx").read_bytes()
    assert idx[17] == 4
    assert IndexedDataset(str(cfg.run_dir / "tokenize" / "code")).index.dtype == np.int32


def test_same_outputs_whatever_the_number_of_tasks(tokenized, tokenize_run):
    """Three array tasks (each its share of the units), then the finalize step: byte-identical outputs."""
    cfg = tokenize_run("three")
    for task in range(3):
        assert run_stage(cfg, "tokenize", task=task, num_tasks=3) == 0
    assert not (cfg.run_dir / "tokenize" / "DONE").exists()
    assert run_stage(cfg, "tokenize", finalize=True) == 0
    ref, got = tokenized.run_dir / "tokenize", cfg.run_dir / "tokenize"
    assert outputs_of(got) == outputs_of(ref)
    for name in ("analysis.md",):
        assert (got / name).read_text() == (ref / name).read_text()
    a, b = (json.loads((d / "blend.json").read_text()) for d in (ref, got))
    assert a["data_path_relative"] == b["data_path_relative"] and a["sources"] == b["sources"]


def test_unencodable_text_is_quarantined_with_its_reason(tokenize_run):
    cfg = tokenize_run("bad")
    shard = cfg.run_dir / "dedup" / "data" / "part-00009-00000.jsonl"
    good = Document(id="ok", text="fine text", source="prose", metadata={"language": "en"})
    shard.write_text(json.dumps(good.to_dict()) + "\n" + '{"id": "lone", "text": "a\\ud800b", "source": "prose"}\n')
    assert run_stage(cfg, "tokenize") == 0
    stats = json.loads((cfg.run_dir / "tokenize" / "stats.json").read_text())
    assert stats["quarantined"] == 1 and stats["quarantine_reasons"] == {"unencodable_text": 1}
    assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())
    entry = json.loads((cfg.run_dir / "tokenize" / "quarantine" / "00004.jsonl").read_text())
    assert entry["reason"] == "unencodable_text" and "lone" in entry["detail"]


def test_resume_after_a_killed_task(tokenized, tokenize_run, corpus_docs, repo_root):
    """A task killed (SIGKILL) mid-stage leaves finished units; the rerun redoes the rest and the outputs equal
    an uninterrupted run's."""
    cfg = tokenize_run("killed", tokenize={"batch_docs": 1})
    write_dedup_output(cfg.run_dir, corpus_docs, shards=4)  # same data, rewritten: fresh mtimes, same bytes
    cmd = [sys.executable, "-m", "lmhpc", "stage", "tokenize", cfg.source_file, "--task", "0", "--num-tasks", "1"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    units = cfg.run_dir / "tokenize" / "_units"
    deadline = time.time() + 120
    while not (units / "000000.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(units.glob("*.json")))
    assert 1 <= done_before < 4  # killed mid-stage: some units are left to redo
    assert not (cfg.run_dir / "tokenize" / "DONE").exists()
    assert run_stage(cfg, "tokenize") == 0
    assert outputs_of(cfg.run_dir / "tokenize") == outputs_of(tokenized.run_dir / "tokenize")
    assert not list((cfg.run_dir / "tokenize").rglob("*.tmp"))


def test_local_executor_runs_two_tasks_and_finalize(tokenized, tokenize_run, repo_root):
    cfg = tokenize_run("local", resources={"tokenize": {"tasks": 2}})
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "lmhpc", "run", cfg.source_file, "--stages", "tokenize"],
                         cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Tokens per source" in res.stdout
    assert outputs_of(cfg.run_dir / "tokenize") == outputs_of(tokenized.run_dir / "tokenize")


def test_token_counts_and_analysis_reach_wandb(tokenize_run):
    from lmhpc.track import offline_run_dirs, read_history

    cfg = tokenize_run("wandb", wandb={"mode": "offline", "project": "lmhpc-tests"})
    assert run_stage(cfg, "tokenize") == 0
    runs = offline_run_dirs(cfg.run_dir / "tokenize")
    assert runs
    # wandb's service may still be writing the offline file when finish() has returned: wait for the row
    deadline = time.monotonic() + 30
    while not (rows := read_history(runs[-1])) and time.monotonic() < deadline:
        time.sleep(0.2)
    row = {k: v for r in rows for k, v in r.items()}
    assert row["stats/per_source/prose/tokens"] > 0
    assert 0 < row["stats/analysis/by_language/zh/byte_fallback_rate"] <= 1
    assert row["stats/analysis/by_source/code/bytes_per_token"] > 1
