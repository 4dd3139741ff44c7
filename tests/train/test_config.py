"""The pretrain section is validated before anything runs: sizes against each other and the world size."""

from __future__ import annotations

import pytest

from lmhpc.config import ConfigError, load_config
from tests.train.fixtures import tiny_pretrain


def _load(make_config, tasks: int = 1, **section):
    return load_config(make_config({"run": {"stages": ["pretrain"]}, "resources": {"pretrain": {"tasks": tasks}},
                                    "pretrain": tiny_pretrain(**section)}))


def test_defaults_and_inferred_dp_shard(make_config):
    cfg = _load(make_config, tasks=4, parallel={"tp": 2})
    resolved = cfg.pretrain.parallel.resolved(4)
    assert resolved.dp_shard == 2 and resolved.dp == 2
    assert cfg.pretrain.global_batch(resolved.dp) == 8


@pytest.mark.parametrize("tasks, section, key, words", [
    (3, {"parallel": {"tp": 2}}, "pretrain.parallel", "not divisible"),
    (4, {"parallel": {"dp_shard": 3}}, "pretrain.parallel", "world size is 4"),
    (2, {"parallel": {"tp": 2}, "model": {"n_kv_heads": 1}}, "pretrain.model.n_kv_heads", "tp=2"),
    (1, {"model": {"dim": 62}}, "pretrain.model.dim", "not divisible"),
    (1, {"model": {"dim": 60}}, "pretrain.model.dim", "even"),
    (1, {"model": {"n_kv_heads": 3}}, "pretrain.model.n_kv_heads", "multiple"),
    (2, {"parallel": {"pp": 2}, "model": {"tie_embeddings": True}}, "pretrain.model.tie_embeddings", "pp = 1"),
    (2, {"parallel": {"tp": 2}, "model": {"moe": {"num_experts": 4}}}, "pretrain.parallel.tp", "MoE"),
    (2, {"parallel": {"cp": 2}, "model": {"layer_pattern": "MA"}}, "pretrain.parallel.cp", "Mamba"),
    (2, {"parallel": {"cp": 2}, "train": {"seq_len": 30}}, "pretrain.train.seq_len", "2×cp"),
    (2, {"parallel": {"pp": 2, "pp_microbatches": 3}}, "pretrain.parallel.pp_microbatches", "split"),
    (2, {"parallel": {"pp": 2, "pp_schedule": "interleaved_1f1b"}}, "pretrain.parallel.pp_stages_per_rank", ">= 2"),
    (4, {"parallel": {"pp": 2, "cp": 2}}, "pretrain.parallel.cp", "pipeline"),
    (2, {"parallel": {"cp": 2, "cp_impl": "dtensor"}, "train": {"device": "cpu"}}, "pretrain.parallel.cp_impl",
     "CUDA"),
    (2, {"parallel": {"ep": 2}}, "pretrain.parallel.ep", "MoE model"),
    (2, {"parallel": {"ep": 2}, "model": {"moe": {"num_experts": 3, "top_k": 1}}}, "pretrain.parallel.ep",
     "divisible"),
    (2, {"parallel": {"ep": 4}, "model": {"moe": {"num_experts": 4}}}, "pretrain.parallel.ep", "dp_shard=2"),
    (4, {"parallel": {"ep": 2, "pp": 2}, "model": {"moe": {"num_experts": 4}}}, "pretrain.parallel.ep",
     "tp = pp = cp = 1"),
    (4, {"parallel": {"ep": 2, "tp": 2, "dp_shard": 2}, "model": {"moe": {"num_experts": 4}}},
     "pretrain.parallel.tp", "MoE"),
    (4, {"parallel": {"ep": 2, "cp": 2, "dp_shard": 2}, "model": {"moe": {"num_experts": 4}}},
     "pretrain.parallel.ep", "tp = pp = cp = 1"),
    (1, {"model": {"moe": {"num_experts": 4}}, "train": {"compile": True}}, "pretrain.train.compile", "MoE"),
    (2, {"parallel": {"cp": 2, "cp_impl": "dtensor"}, "train": {"compile": True}}, "pretrain.parallel.cp_impl",
     "compile"),
    (2, {"parallel": {"tp": 2, "sequence_parallel": False}}, "pretrain.parallel.sequence_parallel", "sequence"),
    (1, {"model": {"layer_pattern": "AX"}}, "pretrain.model.layer_pattern", "letters"),
    (1, {"train": {"seq_len": 128}}, "pretrain.model.max_seq_len", "shorter"),
    (1, {"optimizer": {"warmup_steps": 100}}, "pretrain.optimizer.warmup_steps", "train.steps"),
    (1, {"train": {"fp8": True, "fp8_emulate": True, "compile": True}}, "pretrain.train.fp8_emulate", "compile"),
    (1, {"model": {"dim": 72, "n_heads": 4}, "train": {"fp8": True}}, "pretrain.train.fp8", "16"),
    (1, {"spike": {"policy": "rollback"}}, "pretrain.spike.policy", "checkpoint.interval"),
    (1, {"model": {"moe": {"num_experts": 4, "top_k": 5}}}, "pretrain.model.moe.top_k", "num_experts"),
])
def test_impossible_sizes_fail_naming_the_key(make_config, tasks, section, key, words):
    with pytest.raises(ConfigError) as err:
        _load(make_config, tasks=tasks, **section)
    assert err.value.key == key
    assert words in str(err.value) and "config.yaml" in str(err.value)


def test_unknown_and_mistyped_keys(make_config):
    with pytest.raises(ConfigError, match="pretrain.train.stepz"):
        _load(make_config, train={"stepz": 3})
    with pytest.raises(ConfigError, match="pretrain.parallel.pp_schedule"):
        _load(make_config, parallel={"pp_schedule": "zigzag"})
