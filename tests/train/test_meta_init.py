"""Meta-device build: the model is built on ``meta``, sharded, then each rank allocates and initialises its
own shards. The values equal the whole model built in one process (per-parameter generators keyed by the
seed and the global name), the losses equal the eager build's bitwise, and a 2-rank FSDP2 build holds about
one shard in host memory, not the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lmhpc.model.args import MambaArgs, MoEArgs
from lmhpc.model.transformer import ModelArgs, Transformer
from lmhpc.train.materialize import is_meta, materialize, meta_model
from tests.train.conftest import REPO, free_port
from tests.train.fixtures import tiny_pretrain

HYBRID = ModelArgs(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, layer_pattern="AMA",
                   moe=MoEArgs(num_experts=4, every=2), mamba=MambaArgs(d_state=8), max_seq_len=32)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("tied", [False, True])
def test_meta_materialised_equals_eager(tied):
    args = ModelArgs(**{**HYBRID.__dict__, "tie_embeddings": tied})
    eager = Transformer(args, init_seed=7)
    model = meta_model(args)
    assert is_meta(model) and not model.rope_cos.is_meta  # buffers stay real
    materialize(model, torch.device("cpu"), seed=7)
    assert not is_meta(model)
    ours, theirs = _params(model), _params(eager)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert torch.equal(model.rope_cos, eager.rope_cos)
    tokens = torch.randint(0, 64, (2, 16))
    assert torch.equal(model(tokens), eager(tokens))
    if tied:
        assert model.output.weight is model.tok_embeddings.weight


def test_init_depends_on_seed_and_name_only():
    a = Transformer(HYBRID, init_seed=1)
    b = Transformer(HYBRID, init_seed=2)
    assert not torch.equal(a.layers["0"].attention.wq.weight, b.layers["0"].attention.wq.weight)
    # same shape, other names: other values
    assert not torch.equal(a.layers["0"].attention.wq.weight, a.layers["2"].attention.wq.weight)
    # a pipeline stage (layers deleted) initialises its layers as the whole model does
    stage = meta_model(HYBRID)
    del stage.layers["0"]
    stage.tok_embeddings = None
    materialize(stage, torch.device("cpu"), seed=1)
    for name, p in stage.named_parameters():
        assert torch.equal(p, dict(a.named_parameters())[name]), name
    # statistics of the initialisation: normal(0, init_std), depth-scaled outputs, unit gains
    big = Transformer(ModelArgs(vocab_size=512, dim=256, n_layers=2, n_heads=4), init_seed=3)
    assert abs(big.layers["1"].feed_forward.w1.weight.std().item() - 0.02) < 1e-3
    assert abs(big.layers["1"].attention.wo.weight.std().item() - 0.02 / 2) < 5e-4
    assert torch.equal(big.norm.weight, torch.ones(256))


def test_global_seed_decides_the_default():
    torch.manual_seed(5)
    a = Transformer(HYBRID)
    torch.manual_seed(5)
    b = Transformer(HYBRID)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_start_weights_load_into_meta_model():
    from lmhpc.exchange.weights import ModelWeights, model_state

    source = Transformer(HYBRID, init_seed=11)
    model = meta_model(HYBRID)
    materialize(model, torch.device("cpu"), seed=0, weights=ModelWeights(model_state(source), HYBRID))
    for name, p in model.named_parameters():
        assert torch.equal(p, dict(source.named_parameters())[name]), name
    bad = ModelWeights({k: v for k, v in model_state(source).items() if k != "norm.weight"}, HYBRID)
    with pytest.raises(ValueError, match="norm.weight"):
        materialize(meta_model(HYBRID), torch.device("cpu"), seed=0, weights=bad)


def _probe(mode: str, dim: int, layers: int) -> dict:
    port = free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.train.meta_build_probe", mode, str(dim),
                                       str(layers)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return {r["rank"]: r for r in (json.loads(out.strip().splitlines()[-1]) for out, _ in outs)}


def test_fsdp2_meta_build_holds_one_shard():
    """A 52M-parameter model (207 MB in fp32) on 2 FSDP2 ranks: building it on meta grows each rank's peak
    resident memory by about its shard (103 MB) plus one layer's temporaries; building it whole first grows
    it by at least the whole model. Both give the same values."""
    meta, eager = _probe("meta", 512, 16), _probe("eager", 512, 16)
    model_bytes = meta[0]["model_bytes"]
    for rank in (0, 1):
        local = meta[rank]["local_bytes"]
        assert local <= model_bytes / 2 + 1024
        assert meta[rank]["peak_growth_bytes"] < local + 0.15 * model_bytes, meta[rank]
        assert eager[rank]["peak_growth_bytes"] > 0.95 * model_bytes, eager[rank]
    assert meta[0]["digest"] == eager[0]["digest"]


# layouts where meta and eager builds must give bitwise-identical loss curves
LAYOUTS = {
    "fsdp2": ({"dp_shard": 2}, {}),
    "tp2": ({"tp": 2}, {}),
    "ep2_moe": ({"dp_shard": 2, "ep": 2}, {"layer_pattern": "AM", "moe": {"num_experts": 4, "every": 2}}),
}


@pytest.mark.parametrize("layout", ["fsdp2", pytest.param("tp2", marks=pytest.mark.slow),
                                    pytest.param("ep2_moe", marks=pytest.mark.slow)])
def test_losses_equal_eager_build(tmp_path, prepared_inputs, layout):
    from tests.train.conftest import PretrainRun

    parallel, model = LAYOUTS[layout]
    losses = {}
    for meta in (True, False):
        section = tiny_pretrain(train={"steps": 3, "micro_batch_size": 2, "meta_init": meta}, parallel=parallel,
                                model=model)
        run = PretrainRun(tmp_path / str(meta), prepared_inputs, f"{layout}-{meta}", section, 2)
        assert run.run() == [0, 0], run.logs()
        losses[meta] = run.losses()
    assert len(losses[True]) == 3
    assert losses[True] == losses[False]


@pytest.mark.parametrize("train", [{"activation_checkpointing": "full"}, {"fp8": True, "fp8_emulate": True}])
def test_meta_build_under_wrappers(train):
    """Activation checkpointing wrappers and float8 linear layers are applied to the meta model before it is
    materialised: the values are still those of the eager build."""
    from lmhpc.train.config import ParallelConfig, TrainConfig
    from lmhpc.train.parallel import ParallelDims, parallelize

    args = ModelArgs(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    dims = ParallelDims.build(ParallelConfig(), 1, 0, "cpu")
    cfg = TrainConfig(device="cpu", **train)
    device = torch.device("cpu")
    model = parallelize(meta_model(args), dims, cfg, device, lambda m: materialize(m, device, seed=9))
    eager = parallelize(Transformer(args, init_seed=9), dims, cfg, device)
    ours, theirs = _params(model), _params(eager)
    assert ours.keys() == theirs.keys() and not is_meta(model)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    if "activation_checkpointing" in train:
        assert any("_checkpoint_wrapped_module" in name for name in ours)
