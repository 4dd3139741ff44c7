"""Resume: after a killed rank, or a preemption signal, a rerun redoes only what is not complete and
writes exactly the bytes of a clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.dedup.corpus import REPO, dedup_config, mpi_command, output_tree, run_dedup_mpi, write_curated

pytestmark = pytest.mark.mpi

SHARDS = 24


def rank_pids(config: Path) -> dict[int, int]:
    """PMI rank -> pid of the Python processes running the stage for this config."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config).encode() in cmd and b"lmhpc" in cmd and not cmd[0].endswith(b"mpiexec"):
            for var in env:
                if var.startswith(b"PMI_RANK="):
                    found[int(var.split(b"=", 1)[1])] = int(entry.name)
    return found


def start(config: Path, ranks: int) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.Popen(mpi_command(config, ranks), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(folder: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``folder`` holds ``count`` entries (not temporary ones); False if the run ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and len([p for p in folder.iterdir() if not p.name.startswith(".")]) >= count:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    raise AssertionError(f"{folder} never got {count} entries")


@pytest.fixture(scope="module")
def clean_output(tmp_path_factory, planted):
    tmp = tmp_path_factory.mktemp("clean")
    write_curated(tmp / "runs" / "t", planted.docs, shards=SHARDS)
    res = run_dedup_mpi(dedup_config(tmp / "c.yaml", tmp / "runs"), 1)
    assert res.returncode == 0, res.stderr[-3000:]
    return output_tree(tmp / "runs" / "t" / "dedup")


@pytest.mark.parametrize("phase, folder, count", [("sign", "signed", 3), ("write", "written", 2)])
def test_killed_rank_then_rerun_is_byte_identical(tmp_path, planted, clean_output, phase, folder, count):
    runs = tmp_path / "runs"
    write_curated(runs / "t", planted.docs, shards=SHARDS)
    config = dedup_config(tmp_path / "c.yaml", runs)
    stage = runs / "t" / "dedup"
    proc = start(config, 2)
    reached = wait_for(stage / "_work" / folder, count, proc)
    if not reached:
        pytest.fail(f"the run ended before {count} shards reached the {phase} phase: {proc.stderr.read()[-2000:]}")
    pids = rank_pids(config)
    assert 1 in pids, pids
    os.kill(pids[1], signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert not (stage / "DONE").exists()

    res = run_dedup_mpi(config, 2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert output_tree(stage) == clean_output
    resumed = json.loads((stage / "stats.json").read_text())["resumed"]
    assert resumed["shards_already_signed"] >= (count if phase == "sign" else SHARDS)
    if phase == "write":
        assert resumed["decisions_reused"] and resumed["shards_already_written"] >= 1


def test_preempted_ranks_save_and_rerun_completes(tmp_path, planted, clean_output):
    runs = tmp_path / "runs"
    write_curated(runs / "t", planted.docs, shards=SHARDS)
    config = dedup_config(tmp_path / "c.yaml", runs)
    stage = runs / "t" / "dedup"
    proc = start(config, 2)
    assert wait_for(stage / "_work" / "signed", 2, proc), proc.stderr.read()[-2000:]
    os.kill(rank_pids(config)[0], signal.SIGUSR1)  # only rank 0 is told; both must stop together
    proc.wait(timeout=60)
    assert proc.returncode == 75, proc.stderr.read()[-2000:]
    assert not (stage / "DONE").exists()

    res = run_dedup_mpi(config, 3)  # the rerun may even use another number of ranks
    assert res.returncode == 0, res.stderr[-3000:]
    assert output_tree(stage) == clean_output
    assert json.loads((stage / "stats.json").read_text())["resumed"]["shards_already_signed"] >= 2


def test_changed_settings_invalidate_work_files(tmp_path, planted):
    from lmhpc.config import load_config
    from lmhpc.runner import run_stage

    runs = tmp_path / "runs"
    write_curated(runs / "t", planted.docs[:200], shards=4)
    config = dedup_config(tmp_path / "c.yaml", runs, keep_work=True)
    assert run_stage(load_config(config), "dedup") == 0
    stage = runs / "t" / "dedup"
    (stage / "DONE").unlink()  # as if the stage had not completed
    # a rerun under other settings is refused (the start record names the change) ...
    assert run_stage(load_config(config, ["dedup.minhash.num_perm=64"]), "dedup") == 1
    # ... and without that record, the work files themselves are not reused under other settings
    (stage / "_stage.json").unlink()
    assert run_stage(load_config(config, ["dedup.minhash.num_perm=64"]), "dedup") == 0
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["resumed"] == {"shards_already_signed": 0, "shards_already_written": 0, "decisions_reused": False}
    assert stats["settings"]["num_perm"] == 64
