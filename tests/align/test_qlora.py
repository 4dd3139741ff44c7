"""QLoRA (``lora.base: nf4``): a frozen NF4 base (4-bit codes in memory) with float LoRA adapters. It trains, its
saved model is plain (each NF4 layer as ``dequantize_nf4(codes) + scale · B A`` under ``<name>.weight``) and opens
with lmhpc.exchange, the in-memory codes stay untouched by saves, a resume after a preemption gives
bitwise-identical losses, the base holds about 4.1 bits a weight, FSDP2 on 2 ranks equals 1 rank, and bad configs
name the key."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmhpc.align.config import LoRAConfig
from lmhpc.align.lora import apply_lora, merge_lora, merged_weights
from lmhpc.config import ConfigError, build_root
from lmhpc.exchange.load import load_model
from lmhpc.launch.preempt import Preempted
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.nf4 import dequantize_nf4, quantize_nf4
from lmhpc.quantize.qlinear import NF4Linear, block_linear_names, module_bytes, nf4_base
from lmhpc.train.metrics import read_metrics
from tests.align.conftest import CHAT_DATA, tiny_args
from tests.align.test_align_trainer import _ctx, _data, _fit, _train_cfg
from tests.align.test_sft_stage import RTOL, _run, _sft

TARGETS = ["wq", "wv", "w2"]


def _qlora(**kw) -> LoRAConfig:
    return LoRAConfig(**{"rank": 4, "alpha": 8, "targets": TARGETS, "base": "nf4", **kw})


def _losses(trainer) -> list[float]:
    return [r["loss"] for r in read_metrics(trainer.ctx.stage_dir / "metrics.jsonl")]


def test_qlora_trains_and_saves_dequantized_base_plus_delta(tmp_path, tiny_source):
    base = load_model(tiny_source).model
    base_state = base.state_dict()
    trainer, stats = _fit(_ctx(tmp_path / "a"), _train_cfg(), tiny_source, lora=_qlora())
    losses = _losses(trainer)
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    assert stats["lora"] and trainer.policy_opt is None
    # every block linear is NF4 in memory, the adapters sit on the targets, only they train
    names = block_linear_names(trainer.model)
    assert names and all(isinstance(trainer.model.get_submodule(n), NF4Linear) for n in names)
    assert sorted(trainer.lora.targets) == sorted(n for n in names if n.split(".")[-1] in TARGETS)
    assert trainer.extra_params == list(trainer.lora.parameters())
    # the saved model: plain float weights, dequantized NF4 + scale · B A for targets, dequantized for the rest
    saved = load_model(trainer.ctx.stage_dir).model
    state = saved.state_dict()
    assert not any(k.endswith((".packed", ".absmax_codes", ".absmax_scales", ".offset")) for k in state)
    for name in names:
        expected = dequantize_nf4(quantize_nf4(base_state[f"{name}.weight"].float()))
        if name in trainer.lora.targets:
            delta = trainer.lora.adapter(name).delta().detach()
            assert delta.abs().max() > 0, name  # it trained
            expected = expected + delta
        assert torch.allclose(state[f"{name}.weight"], expected, rtol=0, atol=1e-7), name
        # the codes in memory are those of the starting model, untouched by the saves
        layer = trainer.model.get_submodule(name)
        assert torch.equal(layer.packed, quantize_nf4(base_state[f"{name}.weight"].float()).packed), name
    for key, value in state.items():  # embeddings, norms and output head as loaded
        if not any(key == f"{n}.weight" for n in names):
            assert torch.equal(value, base_state[key]), key
    # and it computes what the trained NF4 model + adapters compute
    tokens = _data(3)
    trainer.model.eval()
    trainer.extras.eval()
    with torch.no_grad():
        assert torch.allclose(saved(tokens), trainer.model(tokens), atol=1e-5)


def test_qlora_resume_after_preemption_is_bitwise(tmp_path, tiny_source):
    cfg = _qlora(dropout=0.1)
    ref_trainer, _ = _fit(_ctx(tmp_path / "a"), _train_cfg(), tiny_source, lora=cfg)
    ctx = _ctx(tmp_path / "b")
    with pytest.raises(Preempted):
        _fit(ctx, _train_cfg(), tiny_source, stop_at=3, lora=cfg)
    ctx.flag = type(ctx.flag)()
    trainer, stats = _fit(ctx, _train_cfg(), tiny_source, lora=cfg)
    assert stats["resumed_from_step"] == 3
    assert _losses(trainer) == _losses(ref_trainer)  # bitwise, every step
    a, b = load_model(ctx.stage_dir).model.state_dict(), load_model(ref_trainer.ctx.stage_dir).model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_merged_weights_swaps_nf4_layers_for_plain_ones_and_back():
    torch.manual_seed(0)
    model = nf4_base(Transformer(tiny_args(vocab_size=64)))
    adapters = apply_lora(model, LoRAConfig(rank=3, alpha=6, targets=["wq", "w2", "output"]))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for adapter in adapters.adapters.values():
            adapter.B.copy_(torch.randn(adapter.B.shape, generator=g) * 0.3)
    layers = {n: model.get_submodule(n) for n in block_linear_names(model)}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        hooked = model(tokens)
        with merged_weights(adapters):
            state = {k: v.clone() for k, v in model.state_dict().items()}
        # put back: the very NF4 modules, codes and float weights unchanged
        assert all(model.get_submodule(n) is layer for n, layer in layers.items())
        after = model.state_dict()
        assert after.keys() == buffers.keys() and all(torch.equal(after[k], buffers[k]) for k in after)
        plain = Transformer(tiny_args(vocab_size=64))
        plain.load_state_dict(state)  # strict: exactly a plain model's keys
        assert torch.allclose(plain(tokens), hooked, atol=1e-5)
        merge_lora(adapters)  # for good: a plain float model with the adapters inside
        assert not any(isinstance(m, NF4Linear) for m in model.modules())
        assert isinstance(model.layers["0"].attention.wq, nn.Linear)
        assert torch.allclose(model(tokens), hooked, atol=1e-5)


def test_nf4_base_holds_about_four_bits_a_weight():
    torch.manual_seed(0)
    model = Transformer(tiny_args(dim=128, vocab_size=64))
    names = block_linear_names(model)
    numel = sum(model.get_submodule(n).weight.numel() for n in names)
    fp32 = sum(module_bytes(model.get_submodule(n)) for n in names)
    assert fp32 == 4 * numel
    nf4_base(model)
    nf4 = sum(module_bytes(model.get_submodule(n)) for n in names)
    bits = 8 * nf4 / numel
    assert 4.0 < bits <= 4.5, bits  # 4-bit codes + 8-bit block absmaxes / 64 + float32 scales / (64·256)
    assert nf4 / fp32 <= 4.5 / 32
    assert not any(isinstance(model.get_submodule(n), nn.Linear) for n in names)


def _sft_config(tmp_path, lora: dict):
    from lmhpc.config import validate

    cfg = build_root({"run": {"name": "c", "runs_dir": str(tmp_path / "runs"), "stages": ["sft"]},
                      "resources": {"sft": {"tasks": 1}}, "wandb": {"mode": "disabled"},
                      "sft": {"data": [str(CHAT_DATA / "chat.jsonl")], "init_from": str(tmp_path), "lora": lora}})
    validate(cfg)
    return cfg


@pytest.mark.parametrize("lora, key", [
    ({"base": "nf4"}, "sft.lora.base"),  # QLoRA trains adapters: rank 0 is full fine-tuning
    ({"rank": 4, "base": "int3"}, "sft.lora.base"),
])
def test_config_errors_name_the_key(tmp_path, lora, key):
    with pytest.raises(ConfigError) as err:
        _sft_config(tmp_path, lora)
    assert err.value.key == key, str(err.value)
    with pytest.raises(ConfigError) as err:  # the core's check, which every stage's config calls
        LoRAConfig(**lora).validate_at("dpo.lora")
    assert err.value.key == "dpo.lora.base"
    assert _sft_config(tmp_path, {"rank": 4, "base": "nf4"}).sft.lora.nf4


def test_fsdp2_on_two_ranks_equals_one_rank(tmp_path, tiny_source):
    """FSDP2 shards parameters only: the NF4 codes (buffers) stay whole on every rank, the adapters too; the
    saved model is the same plain merged model."""
    section = _sft(tiny_source, packing=True, lora={"rank": 4, "base": "nf4", "targets": ["wq", "wv", "w2"]},
                   train={"steps": 4, "lr": 2e-2, "micro_batch_size": 1, "global_batch_size": 4, "max_len": 160})
    one = _run(tmp_path, "one", section)
    assert one.run() == [0], one.logs()
    two = _run(tmp_path, "two", section, world=2)
    assert two.run() == [0, 0], two.logs()
    assert two.losses() == pytest.approx(one.losses(), rel=RTOL)
    a, b = load_model(two.stage_dir).model.state_dict(), load_model(one.stage_dir).model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-3, atol=1e-5), key
    base = load_model(tiny_source).model.state_dict()
    assert not torch.allclose(a["layers.0.attention.wq.weight"],
                              dequantize_nf4(quantize_nf4(base["layers.0.attention.wq.weight"])), atol=1e-6)
