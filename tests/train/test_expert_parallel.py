"""Expert parallel: MoE experts split over data-parallel ranks, tokens exchanged by all-to-all.

Real processes on gloo. EP changes where each expert runs, not what it computes: with the same
per-rank routing and capacity, an ep=2 run must follow the FSDP run without EP, and without a
capacity limit both follow one process on the whole batch. Checkpoints hold each expert once and
resume on another expert-parallel size.
"""

from __future__ import annotations

import shutil

import pytest
import torch.distributed.checkpoint as dcp

from lmhpc.train.metrics import read_metrics
from tests.train.fixtures import tiny_pretrain

STEPS = 4
RTOL = 2e-4


def _section(parallel: dict, micro_batch_size: int, capacity_factor: float, router: str = "topk", **extra) -> dict:
    moe = {"num_experts": 4, "top_k": 2, "capacity_factor": capacity_factor, "router": router}
    return tiny_pretrain(train={"steps": STEPS, "micro_batch_size": micro_batch_size}, parallel=parallel,
                         model={"moe": moe}, **extra)


def _losses(pretrain_run, name: str, section: dict, world: int) -> list[float]:
    """Per-step losses then gradient norms (Adam hides a wrongly scaled gradient from the loss; the
    norm shows it)."""
    run = pretrain_run(name, section, world)
    assert run.run() == [0] * world, run.logs()
    rows = read_metrics(run.stage_dir / "metrics.jsonl")
    assert len(rows) == STEPS
    return [r["loss"] for r in rows] + [r["grad_norm"] for r in rows]


def test_ep2_matches_fsdp_with_the_same_capacity_and_one_process_without(pretrain_run):
    # capacity 1.25: each rank routes and cuts its own tokens, with EP or without
    fsdp = _losses(pretrain_run, "fsdp2-cap", _section({"dp_shard": 2}, 2, 1.25), 2)
    ep = _losses(pretrain_run, "ep2-cap", _section({"dp_shard": 2, "ep": 2}, 2, 1.25), 2)
    assert ep == pytest.approx(fsdp, rel=RTOL), (ep, fsdp)
    # no capacity limit: the same losses as one process on the whole global batch, to a looser bound
    # (the experts' matmuls group other rows, so a top-k near-tie in a later step can flip a token's
    # choice: seen as 1.5e-4 at step 4; gradient norms move more and are not compared here)
    single = _losses(pretrain_run, "ref-nocap", _section({}, 4, 0.0), 1)[:STEPS]
    ep_nocap = _losses(pretrain_run, "ep2-nocap", _section({"dp_shard": 2, "ep": 2}, 2, 0.0), 2)[:STEPS]
    assert ep_nocap == pytest.approx(single, rel=1e-3), (ep_nocap, single)
    assert ep_nocap[-1] < ep_nocap[0]


@pytest.mark.slow
def test_ep2_with_hash_routing_and_expert_copies(pretrain_run):
    """4 ranks, ep=2: two copies of each expert shard, their gradients summed over ``ep_replica``."""
    ref = _losses(pretrain_run, "hash-ref", _section({}, 4, 0.0, router="hash"), 1)
    ep = _losses(pretrain_run, "hash-ep2x2", _section({"dp_shard": 4, "ep": 2}, 1, 0.0, router="hash"), 4)
    assert ep == pytest.approx(ref, rel=RTOL), (ep, ref)


def test_checkpoint_from_ep2_resumes_on_one_process(pretrain_run):
    """Expert weights are saved as shards of the whole (DTensors over the ep mesh): a checkpoint of an
    ep=2 run holds every expert once, and one process resumes from it on the same loss curve."""
    saved = pretrain_run("ep2", _section({"dp_shard": 2, "ep": 2}, 2, 0.0, checkpoint={"interval": 2}), 2)
    assert saved.run() == [0, 0], saved.logs()
    step2 = saved.stage_dir / "checkpoints" / "step-2"
    meta = dcp.FileSystemReader(str(step2)).read_metadata().state_dict_metadata
    experts = {k: tuple(v.size) for k, v in meta.items() if k.endswith(("moe.w1", "moe.w2", "moe.w3"))}
    assert len(experts) >= 6 and all(shape[0] == 4 for shape in experts.values()), experts  # all 4, once

    resumed = pretrain_run("one", _section({}, 4, 0.0, checkpoint={"interval": 0}), 1)
    shutil.copytree(step2, resumed.stage_dir / "checkpoints" / "step-2")
    assert resumed.run() == [0], resumed.logs()
    before = {r["step"]: r["loss"] for r in read_metrics(saved.stage_dir / "metrics.jsonl")}
    after = {r["step"]: r["loss"] for r in read_metrics(resumed.stage_dir / "metrics.jsonl")}
    assert sorted(after) == [3, 4]
    assert [after[s] for s in (3, 4)] == pytest.approx([before[s] for s in (3, 4)], rel=RTOL)
