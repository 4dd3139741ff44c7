"""DCP checkpoints: a sharded (FSDP, 2 ranks) checkpoint, saved asynchronously, resumes in one process
and continues the same loss curve; incomplete folders are ignored; keep-last-k."""

from __future__ import annotations

import shutil

import pytest

from lmhpc.train.checkpoint import COMPLETE_MARKER, complete_steps
from lmhpc.train.metrics import read_metrics
from tests.train.fixtures import tiny_pretrain


def test_resume_on_a_different_world_size(pretrain_run):
    saved = pretrain_run("fsdp2", tiny_pretrain(train={"steps": 6, "micro_batch_size": 2}, parallel={"dp_shard": 2},
                                                checkpoint={"interval": 3, "keep_last": 2, "async_save": True}),
                         world=2)
    assert saved.run() == [0, 0], saved.logs()
    ckpts = saved.stage_dir / "checkpoints"
    assert complete_steps(ckpts) == [3, 6]
    assert (ckpts / "step-3" / ".metadata").exists() and (ckpts / "step-3" / COMPLETE_MARKER).exists()

    resumed = pretrain_run("single", tiny_pretrain(train={"steps": 6, "micro_batch_size": 4},
                                                   checkpoint={"interval": 0, "keep_last": 1}), world=1)
    target = resumed.stage_dir / "checkpoints"
    shutil.copytree(ckpts / "step-3", target / "step-3")
    (target / "step-5").mkdir()  # an interrupted save: no COMPLETE marker, must be ignored
    (target / "step-5" / "junk.distcp").write_bytes(b"partial")
    assert resumed.run() == [0], resumed.logs()
    assert "resumed from checkpoint step 3" in resumed.logs()

    before = {r["step"]: r["loss"] for r in read_metrics(saved.stage_dir / "metrics.jsonl")}
    after = {r["step"]: r["loss"] for r in read_metrics(resumed.stage_dir / "metrics.jsonl")}
    assert sorted(after) == [4, 5, 6]
    assert [after[s] for s in (4, 5, 6)] == pytest.approx([before[s] for s in (4, 5, 6)], rel=2e-4)
    assert complete_steps(target) == [6]  # keep_last=1 purged step-3; the incomplete step-5 went too
    assert not (target / "step-5").exists()
