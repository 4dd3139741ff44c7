"""The curate -> dedup chain with the local executor (curate as array tasks, dedup under mpiexec)."""

from __future__ import annotations

import json
import os

import pytest

from tests.dedup.chain import chain_config, lmhpc, write_jsonl_inputs
from tests.dedup.corpus import kept_ids

pytestmark = [pytest.mark.slow, pytest.mark.mpi]


def test_local_chain_reports_exact_and_near_removals(tmp_path, planted):
    write_jsonl_inputs(tmp_path / "in", planted)
    config = chain_config(tmp_path / "c.yaml", tmp_path / "in", tmp_path / "runs")
    res = lmhpc({**os.environ, "WANDB_MODE": "disabled"}, "run", str(config), "--stages", "curate,dedup")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[lmhpc] dedup: done" in res.stdout
    assert "removed" in res.stderr and "exact and" in res.stderr  # the stage says what it removed
    stage = tmp_path / "runs" / "t" / "dedup"
    stats = json.loads((stage / "stats.json").read_text())
    curated = json.loads((tmp_path / "runs" / "t" / "curate" / "stats.json").read_text())
    assert stats["docs_in"] == curated["docs_out"] == len(planted.docs)
    assert stats["ranks"] == 2
    assert stats["dropped"]["exact"] > 0 and stats["dropped"]["near"] > 0
    assert len(kept_ids(stage)) == stats["docs_out"]
