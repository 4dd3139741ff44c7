"""Each parallel layout trains the same global batch as one process and must give the same loss curve.

Real processes on gloo (one per rank, as SLURM starts them). fp32 on CPU: the layouts differ only
in the order of floating-point reductions, so losses agree to about 1e-6; the bound is 2e-4 relative.
"""

from __future__ import annotations

import pytest

from tests.train.fixtures import tiny_pretrain

STEPS = 4
RTOL = 2e-4


def _section(parallel: dict, micro_batch_size: int, **extra) -> dict:
    return tiny_pretrain(train={"steps": STEPS, "micro_batch_size": micro_batch_size}, parallel=parallel, **extra)


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, prepared_inputs):
    """One process, global batch of 4 sequences."""
    from tests.train.conftest import PretrainRun

    run = PretrainRun(tmp_path_factory.mktemp("ref"), prepared_inputs, "ref", _section({}, 4), 1)
    assert run.run() == [0], run.logs()
    losses = run.losses()
    assert len(losses) == STEPS and losses[-1] < losses[0]
    return losses


LAYOUTS = {
    "dp2": ({"dp_replicate": 2, "dp_shard": 1}, 2, 2),
    "fsdp2": ({"dp_shard": 2}, 2, 2),
    "tp2_sp": ({"tp": 2, "sequence_parallel": True}, 4, 2),
    "pp2_1f1b": ({"pp": 2, "pp_microbatches": 2}, 4, 2),
    "cp2": ({"cp": 2}, 4, 2),
    "fsdp2_tp2": ({"dp_shard": 2, "tp": 2}, 2, 4),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(name, pretrain_run, reference_losses):
    parallel, mbs, world = LAYOUTS[name]
    run = pretrain_run(name, _section(parallel, mbs), world)
    assert run.run() == [0] * world, run.logs()
    losses = run.losses()
    assert len(losses) == STEPS
    assert losses == pytest.approx(reference_losses, rel=RTOL), (name, losses, reference_losses)
