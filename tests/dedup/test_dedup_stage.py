"""The dedup stage in this process (one rank): quality on planted duplicates, accounting, inspection."""

from __future__ import annotations

import json
import time

import pytest

from lmhpc.config import load_config
from lmhpc.dedup.planted import score
from lmhpc.runner import run_stage
from tests.dedup.corpus import dedup_config, dropped_records, kept_ids, predicted_from_dropped, write_curated


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, planted):
    """One run at default settings, shared by the tests that only read its results."""
    tmp_path = tmp_path_factory.mktemp("default")
    runs_dir = tmp_path / "runs"
    write_curated(runs_dir / "t", planted.docs, shards=6)
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs_dir))
    assert run_stage(cfg, "dedup") == 0
    stage = runs_dir / "t" / "dedup"
    return stage, json.loads((stage / "stats.json").read_text())


def test_planted_duplicates_are_found_at_default_settings(default_run, planted):
    stage, _ = default_run
    result = score(predicted_from_dropped(stage), planted)
    assert result["planted_pair_recall_j085"] >= 0.95, result
    assert result["recall"] >= 0.95, result
    assert result["precision"] >= 0.99, result
    for level, slot in result["by_level"].items():
        if level.startswith("miss"):  # near misses (Jaccard <= 0.6) are not merged with their original
            assert slot["merged_rate"] <= 0.02, (level, slot)


def test_one_document_per_cluster_survives(default_run, planted):
    stage, stats = default_run
    kept = kept_ids(stage)
    assert len(kept) == len(set(kept)) == stats["docs_out"]
    predicted = predicted_from_dropped(stage)
    clusters_kept = [predicted[d] for d in kept if d in predicted]
    assert len(clusters_kept) == len(set(clusters_kept))
    dropped = dropped_records(stage)
    assert {r["reason"] for r in dropped} == {"exact", "near"}
    assert all(r["kept_id"] in set(kept) or r["kept_id"] in predicted for r in dropped)
    assert set(kept).isdisjoint(r["id"] for r in dropped)


def test_accounting_and_statistics(default_run, planted):
    stage, stats = default_run
    assert stats["docs_in"] == len(planted.docs)
    assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())
    assert stats["dropped"]["exact"] > 0 and stats["dropped"]["near"] > 0
    near = stats["near"]
    assert near["clusters"] > 0 and sum(near["size_hist"].values()) == near["clusters"]
    assert near["docs_in_clusters"] == near["clusters"] + stats["dropped"]["near"]
    assert near["verified_pairs"] + near["rejected_pairs"] == near["candidate_pairs"]
    assert stats["exact"]["docs_in_groups"] == stats["exact"]["groups"] + stats["dropped"]["exact"]
    biggest = near["largest"][0]
    assert biggest["size"] == max(int(k.split("-")[-1]) for k in near["size_hist"]) or biggest["size"] >= 2
    assert biggest["kept_id"] == biggest["member_ids"][0]
    mem = stats["memory"]
    assert mem["shuffle_bytes_per_doc"] >= 0 and mem["work_bytes_per_doc"] > 128 * 4
    assert mem["exchange_peak_bytes_per_doc_per_rank"] > 0
    assert [e["ranks"] for e in mem["estimate_1tb"]] == [16, 64, 256]
    assert stats["settings"]["bands"] == 14 and stats["settings"]["rows"] == 9
    assert stats["throughput"]["signatures_per_s_per_core"] > 0
    assert not (stage / "_work").exists()  # work files removed once complete (keep_work: false)


def test_inspection_file_shows_largest_clusters_with_text(default_run):
    stage, stats = default_run
    inspection = json.loads((stage / "clusters.json").read_text())
    assert len(inspection["near"]) == len(stats["near"]["largest"]) > 0
    first = inspection["near"][0]
    assert first["kept"]["id"] == stats["near"]["largest"][0]["kept_id"]
    assert first["kept"]["text"] and all(m["text"] for m in first["members"])


def test_exact_only_and_near_only(tmp_path, runs_dir, planted):
    write_curated(runs_dir / "t", planted.docs, shards=3)
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs_dir, minhash={"enabled": False}))
    assert run_stage(cfg, "dedup") == 0
    exact_only = json.loads((runs_dir / "t" / "dedup" / "stats.json").read_text())
    assert exact_only["dropped"]["near"] == 0 and exact_only["dropped"]["exact"] > 0

    write_curated(runs_dir / "u", planted.docs, shards=3)
    cfg = load_config(dedup_config(tmp_path / "d.yaml", runs_dir, name="u", exact={"enabled": False}))
    assert run_stage(cfg, "dedup") == 0
    near_only = json.loads((runs_dir / "u" / "dedup" / "stats.json").read_text())
    assert near_only["dropped"]["exact"] == 0
    # exact copies are near duplicates too (Jaccard 1), so MinHash alone removes at least as many
    assert near_only["dropped"]["near"] > exact_only["dropped"]["exact"]


def test_quality_score_decides_which_copy_is_kept(tmp_path, runs_dir):
    from lmhpc.data.documents import Document

    text = " ".join(chr(97 + i % 26) * (1 + i // 26) for i in range(60))  # 60 distinct words, no digits
    docs = [Document(id="first", text=text, metadata={"q": 0.2}),
            Document(id="best", text=text + " extra", metadata={"q": 0.9}),
            Document(id="none", text=text)]
    write_curated(runs_dir / "t", docs, shards=2)
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs_dir, quality_key="q"))
    assert run_stage(cfg, "dedup") == 0
    assert kept_ids(runs_dir / "t" / "dedup") == ["best"]


def test_char_shingles_find_the_planted_duplicates(tmp_path, runs_dir, planted):
    write_curated(runs_dir / "t", planted.docs, shards=4)
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs_dir, minhash={"shingle": "char", "ngram": 24}))
    assert run_stage(cfg, "dedup") == 0
    result = score(predicted_from_dropped(runs_dir / "t" / "dedup"), planted)
    assert result["precision"] >= 0.99 and result["planted_pair_recall_j085"] >= 0.9, result


def test_cluster_statistics_reach_wandb(tmp_path, runs_dir, planted):
    from lmhpc.track import offline_run_dirs, read_history

    write_curated(runs_dir / "t", planted.docs[:300], shards=2)
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs_dir, wandb="offline"))
    assert run_stage(cfg, "dedup") == 0
    stage = runs_dir / "t" / "dedup"
    stats = json.loads((stage / "stats.json").read_text())
    # wandb's service may still be writing the offline file when finish() has returned: wait for the row
    deadline = time.monotonic() + 30
    while not (rows := read_history(offline_run_dirs(stage)[0])) and time.monotonic() < deadline:
        time.sleep(0.2)
    logged = {k: v for row in rows for k, v in row.items()}
    assert logged["stats/near/clusters"] == stats["near"]["clusters"] > 0
    assert logged["stats/dropped/near"] == stats["dropped"]["near"]
    assert logged["stats/memory/shuffle_bytes_per_doc"] == stats["memory"]["shuffle_bytes_per_doc"]
    assert any(k.startswith("stats/near/size_hist/") for k in logged)
