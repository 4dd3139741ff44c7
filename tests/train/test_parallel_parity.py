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


_references: dict[int, list[float]] = {}


@pytest.fixture
def reference_losses(tmp_path_factory, prepared_inputs):
    """``reference_losses(n_layers)``: one process, global batch of 4 sequences (computed once per size)."""
    from tests.train.conftest import PretrainRun

    def _get(n_layers: int = 2) -> list[float]:
        if n_layers not in _references:
            run = PretrainRun(tmp_path_factory.mktemp("ref"), prepared_inputs, "ref",
                              _section({}, 4, model={"n_layers": n_layers}), 1)
            assert run.run() == [0], run.logs()
            losses = run.losses()
            assert len(losses) == STEPS and losses[-1] < losses[0]
            _references[n_layers] = losses
        return _references[n_layers]

    return _get


# name: (parallel section, micro-batch size per data-parallel rank, world size, model overrides)
# the quick set covers FSDP, TP+SP, PP and CP; the slow set (run in CI) every layout on its own too
LAYOUTS = {
    "fsdp2_tp2": ({"dp_shard": 2, "tp": 2}, 2, 4, {}),
    "pp2_1f1b": ({"pp": 2, "pp_microbatches": 2}, 4, 2, {}),
    "cp2": ({"cp": 2}, 4, 2, {}),
}
SLOW_LAYOUTS = {
    "dp2": ({"dp_replicate": 2, "dp_shard": 1}, 2, 2, {}),
    "fsdp2": ({"dp_shard": 2}, 2, 2, {}),
    "tp2_sp": ({"tp": 2, "sequence_parallel": True}, 4, 2, {}),
    "pp2_gpipe": ({"pp": 2, "pp_schedule": "gpipe", "pp_microbatches": 4}, 4, 2, {}),
    "pp2_interleaved": ({"pp": 2, "pp_schedule": "interleaved_1f1b", "pp_stages_per_rank": 2,
                         "pp_microbatches": 2}, 4, 2, {"n_layers": 4}),
    "hsdp_2x2": ({"dp_replicate": 2, "dp_shard": 2}, 1, 4, {}),
    "pp2_fsdp2": ({"pp": 2, "dp_shard": 2, "pp_microbatches": 2}, 2, 4, {}),
    "pp2_dp2": ({"pp": 2, "dp_replicate": 2, "dp_shard": 1, "pp_microbatches": 2}, 2, 4, {}),
    "pp2_tp2": ({"pp": 2, "tp": 2, "pp_microbatches": 2}, 4, 4, {}),
    "cp2_tp2": ({"cp": 2, "tp": 2}, 4, 4, {}),
    "cp2_fsdp2": ({"cp": 2, "dp_shard": 2}, 2, 4, {}),
    # 3D: 8 ranks (tiny, but every mesh dimension at once)
    "pp2_fsdp2_tp2": ({"pp": 2, "dp_shard": 2, "tp": 2, "pp_microbatches": 2}, 2, 8, {}),
    "cp2_fsdp2_tp2": ({"cp": 2, "dp_shard": 2, "tp": 2}, 2, 8, {}),
}
PARAMS = [pytest.param(n, id=n) for n in LAYOUTS] + \
    [pytest.param(n, id=n, marks=pytest.mark.slow) for n in SLOW_LAYOUTS]


@pytest.mark.parametrize("name", PARAMS)
def test_layout_matches_single_process(name, pretrain_run, reference_losses):
    parallel, mbs, world, model = {**LAYOUTS, **SLOW_LAYOUTS}[name]
    run = pretrain_run(name, _section(parallel, mbs, model=model), world)
    assert run.run() == [0] * world, run.logs()
    losses = run.losses()
    assert len(losses) == STEPS
    reference = reference_losses(model.get("n_layers", 2))
    assert losses == pytest.approx(reference, rel=RTOL), (name, losses, reference)
