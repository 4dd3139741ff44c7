"""On the real cluster: jobs load the config frozen at launch, and a second launch of a run whose jobs are
still queued is refused (or cancels them with --cancel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_config
from tests.helpers import curate_config, write_jsonl_corpus
from tests.slurm.test_pipeline_slurm import lmhpc, wait_status

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]


def job_ids(run_dir: Path) -> list[str]:
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    return [j for s in stages.values() for j in s.get("job_ids", [])]


@pytest.fixture
def two_stage_config(tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=20)
    data = curate_config(tmp_path, corpus)
    data["run"]["stages"] = ["curate", "dedup"]
    data["curate"]["filters"] = {"gopher_repetition": {"enabled": False}, "gopher_quality": {"enabled": False}}
    data["dedup"] = {"minhash": {"threshold": 0.8}}
    data["executor"] = {"kind": "slurm", "partition": "debug", "signal_delay_s": 30}
    data["resources"] = {"curate": {"tasks": 1, "timeout_min": 10, "mem_gb": 1},
                         "dedup": {"tasks": 2, "timeout_min": 10, "mem_gb": 1}}
    return write_config(tmp_path / "c.yaml", data), data


def test_jobs_run_the_config_frozen_at_launch(slurm_cluster, tmp_path, two_stage_config):
    env = slurm_cluster.env
    path, data = two_stage_config
    lmhpc(env, "run", str(path))
    run_dir = tmp_path / "runs" / "t"
    ids = job_ids(run_dir)
    slurm_cluster.run("scontrol", "hold", ",".join(ids), check=False)  # nothing starts while the YAML changes
    data["dedup"]["minhash"]["threshold"] = 0.5
    data["curate"]["shard_max_mb"] = 1.0
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    slurm_cluster.run("scontrol", "release", ",".join(ids), check=False)
    rows = wait_status(env, run_dir, timeout=300)
    assert [r["state"] for r in rows] == ["done", "done"], rows
    for stage, key, launched in (("dedup", ("minhash", "threshold"), 0.8), ("curate", ("shard_max_mb",), 64.0)):
        saved = json.loads((run_dir / stage / "config.json").read_text())[stage]
        for k in key:
            saved = saved[k]
        assert saved == launched, (stage, saved)


def test_second_launch_refused_while_jobs_are_queued(slurm_cluster, tmp_path, two_stage_config):
    env = slurm_cluster.env
    path, _ = two_stage_config
    lmhpc(env, "run", str(path))
    run_dir = tmp_path / "runs" / "t"
    first = job_ids(run_dir)
    slurm_cluster.run("scontrol", "hold", ",".join(first), check=False)
    again = lmhpc(env, "run", str(path), check=False)
    assert again.returncode == 2, again.stdout + again.stderr
    assert "still has jobs queued or running" in again.stderr
    # the first job may have started (and ended) before the hold: the ones still held are named as pending
    held = re.findall(r"(\d+) \(PENDING\)", again.stderr)
    assert held and set(held) <= set(first), again.stderr
    assert job_ids(run_dir) == first  # the record of the queued jobs is untouched
    replaced = lmhpc(env, "run", str(path), "--cancel")
    assert "cancelling" in replaced.stdout
    second = job_ids(run_dir)
    assert set(second).isdisjoint(first)
    rows = wait_status(env, run_dir, timeout=300)
    assert [r["state"] for r in rows] == ["done", "done"], rows
    for job in held:
        assert {r.state for r in slurm_cluster.sacct(job)} == {"CANCELLED"}
