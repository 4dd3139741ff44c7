"""LoRA by hand against peft's ``inject_adapter_in_model`` on the same plain module (golden), merge round trip,
and the sft config's errors naming their keys."""

from __future__ import annotations

import copy

import pytest
import torch

from lmhpc.align.config import LoRAConfig
from lmhpc.align.lora import apply_lora, merge_lora, merged_weights
from lmhpc.config import ConfigError, build_root, validate
from lmhpc.model.transformer import Transformer
from tests.align.conftest import CHAT_DATA, tiny_args
from tests.helpers import import_peer

TARGETS = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny_args(vocab_size=64))


def _randomise(adapters) -> None:
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for adapter in adapters.adapters.values():
            adapter.A.copy_(torch.randn(adapter.A.shape, generator=g) * 0.3)
            adapter.B.copy_(torch.randn(adapter.B.shape, generator=g) * 0.3)


def test_lora_equals_peft_inject_adapter_in_model():
    peft = import_peer("peft")
    ours = _model()
    theirs = copy.deepcopy(ours)
    adapters = apply_lora(ours, LoRAConfig(rank=4, alpha=12, targets=TARGETS))
    _randomise(adapters)
    theirs = peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0,
                                                           target_modules=TARGETS), theirs)
    peft_layers = {name: m for name, m in theirs.named_modules() if hasattr(m, "lora_A")}
    assert sorted(peft_layers) == sorted(adapters.targets)
    with torch.no_grad():
        for name, layer in peft_layers.items():
            ours_adapter = adapters.adapter(name)
            layer.lora_A["default"].weight.copy_(ours_adapter.A)
            layer.lora_B["default"].weight.copy_(ours_adapter.B)
            assert layer.scaling["default"] == ours_adapter.scale == 3.0
    tokens = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        expected = theirs(tokens)
        assert torch.allclose(ours(tokens), expected, atol=1e-5)
        assert not torch.allclose(_model()(tokens), expected, atol=1e-3)  # the adapters matter
    # same initialisation scheme as peft's default: B zeros, A Kaiming-uniform bounds
    fresh = apply_lora(_model(), LoRAConfig(rank=4, targets=["wq"]))
    adapter = fresh.adapter("layers.0.attention.wq")
    assert torch.count_nonzero(adapter.B) == 0
    assert float(adapter.A.detach().abs().max()) <= 1 / adapter.A.shape[1] ** 0.5 + 1e-6
    # only the adapters train
    assert all(not p.requires_grad for p in ours.parameters())
    assert all(p.requires_grad for p in adapters.parameters())


def test_merge_round_trip():
    model = _model(1)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapters = apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=["wq", "wv", "w2", "output"]))
    _randomise(adapters)
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        hooked = model(tokens)
        with merged_weights(adapters):
            adapters.detach_hooks()
            merged = model(tokens)
            merged_state = {k: v.clone() for k, v in model.state_dict().items()}
        for k, v in model.state_dict().items():  # put back exactly
            assert torch.equal(v, base[k]), k
    assert torch.allclose(merged, hooked, atol=1e-5)
    plain = _model(1)
    plain.load_state_dict(merged_state)
    with torch.no_grad():
        assert torch.allclose(plain(tokens), hooked, atol=1e-5)
    # merge for good: the hooks are gone, the weights hold the adapters
    model2 = _model(1)
    adapters2 = apply_lora(model2, LoRAConfig(rank=3, alpha=6, targets=["wq", "wv", "w2", "output"]))
    _randomise(adapters2)
    merge_lora(adapters2)
    with torch.no_grad():
        assert torch.allclose(model2(tokens), hooked, atol=1e-5)
        assert torch.allclose(model2.layers["0"].attention.wq.weight, merged_state["layers.0.attention.wq.weight"])


def _config(tmp_path, sft: dict, stages=("sft",), tasks: int = 1):
    data = {"run": {"name": "c", "runs_dir": str(tmp_path / "runs"), "stages": list(stages)},
            "resources": {"sft": {"tasks": tasks}}, "wandb": {"mode": "disabled"},
            "sft": {"data": [str(CHAT_DATA / "chat.jsonl")], "init_from": str(tmp_path), **sft}}
    cfg = build_root(data)
    validate(cfg)
    return cfg


@pytest.mark.parametrize("sft, tasks, key", [
    ({"lora": {"rank": 4, "targets": ["wq", "attn"]}}, 1, "sft.lora.targets"),
    ({"lora": {"rank": -1}}, 1, "sft.lora.rank"),
    ({"lora": {"rank": 4, "dropout": 1.5}}, 1, "sft.lora.dropout"),
    ({"train": {"global_batch_size": 6, "micro_batch_size": 4}}, 1, "sft.train.global_batch_size"),
    ({"train": {"global_batch_size": 4, "micro_batch_size": 4}}, 2, "sft.train.global_batch_size"),
    ({"train": {"dp_shard": 2}}, 1, "sft.train.dp_shard"),
    ({"train": {"warmup_steps": 500, "steps": 10}}, 1, "sft.train.warmup_steps"),
    ({"train": {"lr": 0}}, 1, "sft.train.lr"),
    ({"data": ["no/such/*.jsonl"]}, 1, "sft.data[0]"),
    ({"data": []}, 1, "sft.data"),
    ({"init_from": "/no/such/model"}, 1, "sft.init_from"),
])
def test_config_errors_name_the_key(tmp_path, sft, tasks, key):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, sft, tasks=tasks)
    assert err.value.key == key, str(err.value)


def test_without_init_from_sft_needs_a_model_stage(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, {"init_from": ""})
    assert err.value.key == "sft.init_from"
    cfg = _config(tmp_path, {})  # a good config passes
    assert cfg.sft.train.grad_accum(1) == 2


def test_reads_follow_the_run(tmp_path):
    from lmhpc.stages import STAGES

    cfg = build_root({"run": {"name": "c", "runs_dir": str(tmp_path / "runs"), "stages": ["pretrain", "sft"]},
                      "wandb": {"mode": "disabled"}, "sft": {"data": [str(CHAT_DATA / "chat.jsonl")]}})
    assert STAGES["sft"].reads_for(cfg) == ("pretrain",)
    cfg = build_root({"run": {"name": "c", "runs_dir": str(tmp_path / "runs"), "stages": ["sft"]},
                      "wandb": {"mode": "disabled"}, "sft": {"init_from": str(tmp_path)}})
    assert STAGES["sft"].reads_for(cfg) == ()
