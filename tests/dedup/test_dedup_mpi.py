"""The dedup stage as one MPI job: the same kept set and the same bytes for 1, 2 and 4 ranks."""

from __future__ import annotations

import json

import pytest

from tests.dedup.corpus import dedup_config, output_tree, run_dedup_mpi, write_curated

pytestmark = pytest.mark.mpi


def test_output_identical_for_1_2_and_4_ranks(tmp_path, planted):
    trees, stats = {}, {}
    for ranks in (1, 2, 4):
        runs = tmp_path / f"runs{ranks}"
        write_curated(runs / "t", planted.docs, shards=7)  # 7 shards: uneven over 2 and 4 ranks
        # small exchange messages force several alltoallv rounds; bands go 3 at a time
        config = dedup_config(tmp_path / f"c{ranks}.yaml", runs, exchange_max_mb=0.01,
                              minhash={"bands_per_round": 3})
        res = run_dedup_mpi(config, ranks)
        assert res.returncode == 0, res.stderr[-3000:]
        stage = runs / "t" / "dedup"
        trees[ranks] = output_tree(stage)
        stats[ranks] = json.loads((stage / "stats.json").read_text())
    assert trees[1] and trees[1] == trees[2] == trees[4]
    for key in ("docs_in", "docs_out", "dropped", "quarantined"):
        assert stats[1][key] == stats[2][key] == stats[4][key], key
    for key in ("clusters", "size_hist", "largest", "candidate_pairs", "verified_pairs"):
        assert stats[1]["near"][key] == stats[2]["near"][key] == stats[4]["near"][key], key
    assert stats[1]["exact"] == stats[2]["exact"] == stats[4]["exact"]
    assert [s["ranks"] for s in stats.values()] == [1, 2, 4]
    # with several ranks, records really crossed between them
    assert stats[1]["memory"]["shuffle_bytes"]["total"] == 0
    assert stats[2]["memory"]["shuffle_bytes"]["bands"] > 0 and stats[4]["memory"]["shuffle_bytes"]["verify"] > 0
    # the measured shuffle matches the model the 1 TB estimate uses: a share (N-1)/N leaves its rank
    for n in (2, 4):
        model = stats[n]["memory"]["off_rank_bytes_per_doc_model"] * (n - 1) / n
        assert abs(stats[n]["memory"]["shuffle_bytes_per_doc"] - model) < 0.15 * model, (n, model)
