"""The Megatron-Core backend on CPU: every config key translates to megatron-core's own config classes
(built here for real) or fails validation naming the key; weights convert both ways exactly and give
megatron-core's GPTModel (local spec) our logits; the run's .bin/.idx blend reads through megatron-core's
BlendedMegatronDatasetBuilder in the native backend's sample order; the backend is refused before
submission without GPUs. Training itself needs CUDA (tools/gpu_check_megatron.py)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmhpc.config import ConfigError, load_config
from lmhpc.exchange.hf import UnsupportedModel
from lmhpc.exchange.megatron import from_megatron, fuse_qkv, megatron_spec_of, split_qkv, to_megatron
from lmhpc.model.args import MoEArgs
from lmhpc.model.transformer import ModelArgs, Transformer
from lmhpc.train.config import PretrainConfig
from lmhpc.train.megatron import translate
from tests.train.conftest import REPO
from tests.train.fixtures import tiny_pretrain

GPU = {"tasks": 1, "gpus_per_node": 1}


def _load(make_config, resources=None, executor=None, **section):
    data = {"run": {"stages": ["pretrain"]}, "resources": {"pretrain": resources or GPU},
            "pretrain": {"backend": "megatron", **tiny_pretrain(**section)}}
    data["pretrain"]["train"]["device"] = "auto"
    if executor:
        data["executor"] = executor
    return load_config(make_config(data))


def _cfg(**model) -> PretrainConfig:
    cfg = PretrainConfig(backend="megatron")
    cfg.train.device = "cuda"
    cfg.model = dataclasses.replace(cfg.model, **model)
    return cfg


# ---------------------------------------------------------------------------------------------
# translation of each field


def test_model_fields_translate():
    cfg = _cfg(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, ffn_hidden=200, norm_eps=1e-6, rope_theta=5e5,
               init_std=0.01, embedding_init_std=1e-3, max_seq_len=512)
    tc = translate.transformer_config(cfg, 1)
    assert (tc.hidden_size, tc.num_layers, tc.num_attention_heads, tc.num_query_groups, tc.kv_channels) == \
        (96, 3, 6, 2, 16)
    assert tc.ffn_hidden_size == 200 and tc.gated_linear_unit and tc.activation_func is torch.nn.functional.silu
    assert tc.normalization == "RMSNorm" and tc.layernorm_epsilon == 1e-6 and not tc.add_bias_linear
    assert tc.init_method_std == 0.01 and tc.embedding_init_method_std == 1e-3
    assert not tc.rotary_interleaved  # the conversion permutes Q/K rows instead
    # depth-scaled output layers: megatron's default scaled init (std / sqrt(2 layers)) ...
    w = torch.empty(2000, 200)
    tc.output_layer_init_method(w)
    assert abs(w.std().item() - 0.01 / (2 * 3) ** 0.5) < 2e-4
    # ... or plain std when depth_scaled_init is off
    tc = translate.transformer_config(_cfg(init_std=0.01, depth_scaled_init=False), 1)
    tc.output_layer_init_method(w)
    assert abs(w.std().item() - 0.01) < 3e-4
    # ffn_hidden 0: the resolved SwiGLU size
    assert translate.transformer_config(_cfg(dim=256), 1).ffn_hidden_size == ModelArgs(dim=256).hidden_dim
    kw = translate.gpt_model_kwargs(cfg, 1024)
    assert kw == {"vocab_size": 1024, "max_sequence_length": 512, "position_embedding_type": "rope",
                  "rotary_base": 500000, "rotary_percent": 1.0, "share_embeddings_and_output_weights": False,
                  "parallel_output": True}
    assert translate.gpt_model_kwargs(_cfg(tie_embeddings=True), 8)["share_embeddings_and_output_weights"]


def test_moe_fields_translate():
    cfg = _cfg(n_layers=4, moe=MoEArgs(num_experts=8, top_k=2, every=2, expert_hidden=320, capacity_factor=1.5,
                                       load_balance_coef=0.02, z_loss_coef=0.003))
    tc = translate.transformer_config(cfg, 1)
    assert tc.num_moe_experts == 8 and tc.moe_router_topk == 2 and tc.moe_ffn_hidden_size == 320
    assert tc.moe_layer_freq == [0, 1, 0, 1]  # our placement: layer i when i % every == every - 1
    assert tc.moe_expert_capacity_factor == 1.5 and tc.moe_token_drop_policy == "position"
    assert tc.moe_router_load_balancing_type == "aux_loss" and tc.moe_aux_loss_coeff == 0.02
    assert tc.moe_z_loss_coeff == 0.003 and not tc.moe_router_pre_softmax
    no_cap = translate.transformer_config(_cfg(moe=MoEArgs(num_experts=4, capacity_factor=0)), 1)
    assert no_cap.moe_expert_capacity_factor is None


def test_parallel_and_precision_fields_translate():
    cfg = _cfg(n_layers=8)
    cfg.parallel = dataclasses.replace(cfg.parallel, tp=2, pp=2, pp_stages_per_rank=2, pp_schedule="interleaved_1f1b",
                                       cp=2, cp_impl="allgather_kv", dp_replicate=2)
    cfg.train.precision, cfg.train.activation_checkpointing = "bf16", "full"
    cfg.train.micro_batch_size, cfg.train.grad_accum = 4, 3
    tc = translate.transformer_config(cfg, 32)
    assert (tc.tensor_model_parallel_size, tc.pipeline_model_parallel_size, tc.context_parallel_size) == (2, 2, 2)
    assert tc.virtual_pipeline_model_parallel_size == 2 and tc.sequence_parallel
    assert tc.cp_comm_type == "all_gather"
    assert tc.bf16 and tc.params_dtype == torch.float32 and tc.pipeline_dtype == torch.bfloat16
    assert (tc.recompute_granularity, tc.recompute_method, tc.recompute_num_layers) == ("full", "uniform", 1)
    sched = translate.schedule(cfg, 32)  # dp = 32 / (2·2·2) = 4; 4 pipeline micro-batches of 1 sequence
    assert (sched.data_parallel, sched.micro_batch_size, sched.num_microbatches, sched.global_batch) == (4, 1, 12, 48)
    ddp = translate.ddp_config(cfg, 32)
    assert ddp.use_distributed_optimizer and ddp.num_distributed_optimizer_instances == 2 and ddp.grad_reduce_in_fp32
    cfg.parallel = dataclasses.replace(cfg.parallel, cp_impl="auto")
    assert translate.transformer_config(cfg, 32).cp_comm_type == "p2p"
    # plain data parallel (dp_shard = 1): no distributed optimizer
    plain = _cfg()
    plain.parallel = dataclasses.replace(plain.parallel, dp_replicate=4, dp_shard=1)
    assert not translate.ddp_config(plain, 4).use_distributed_optimizer
    assert not translate.optimizer_config(plain, 4).use_distributed_optimizer
    assert not translate.optimizer_config(_cfg(), 1).use_distributed_optimizer  # one rank: dp_shard resolves to 1
    assert translate.optimizer_config(_cfg(), 4).use_distributed_optimizer
    moe = _cfg(moe=MoEArgs(num_experts=4))
    moe.parallel = dataclasses.replace(moe.parallel, ep=2)
    assert translate.transformer_config(moe, 2).expert_model_parallel_size == 2


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise"])
def test_fp8_recipes_translate(recipe):
    cfg = _cfg(n_layers=6)
    cfg.train.fp8, cfg.train.precision = True, "bf16"
    cfg.megatron = dataclasses.replace(cfg.megatron, fp8_recipe=recipe, fp8_amax_history_len=16)
    if recipe == "tensorwise":
        cfg.megatron = dataclasses.replace(cfg.megatron, fp8_first_last_bf16=True, fp8_bf16_first_layers=2)
    tc = translate.transformer_config(cfg, 1)
    assert tc.fp8 == "hybrid" and tc.fp8_recipe == recipe and tc.fp8_amax_history_len == 16
    if recipe == "tensorwise":
        assert tc.first_last_layers_bf16 and tc.num_layers_at_start_in_bf16 == 2
        assert tc.num_layers_at_end_in_bf16 == 1
    with pytest.raises(RuntimeError, match="Transformer Engine spec"):
        translate.layer_spec(cfg, "local")


def test_optimizer_and_schedule_fields_translate():
    cfg = _cfg()
    cfg.optimizer = dataclasses.replace(cfg.optimizer, lr=1e-3, min_lr_ratio=0.05, betas=[0.8, 0.9], eps=1e-6,
                                        weight_decay=0.05, grad_clip=0.5, warmup_steps=7, schedule="wsd",
                                        decay_fraction=0.25)
    cfg.train.steps = 100
    oc = translate.optimizer_config(cfg, 1)
    assert (oc.optimizer, oc.lr, oc.min_lr, oc.adam_beta1, oc.adam_beta2, oc.adam_eps) == \
        ("adam", 1e-3, 5e-5, 0.8, 0.9, 1e-6)
    assert oc.weight_decay == 0.05 and oc.clip_grad == 0.5
    cfg.optimizer = dataclasses.replace(cfg.optimizer, grad_clip=0)
    assert translate.optimizer_config(cfg, 1).clip_grad == 0.0


# ---------------------------------------------------------------------------------------------
# what cannot be expressed fails validation, naming the key


@pytest.mark.parametrize("section, key", [
    ({"model": {"layer_pattern": "MA"}}, "pretrain.model.layer_pattern"),
    ({"model": {"mup_base_dim": 32}}, "pretrain.model.mup_base_dim"),
    ({"model": {"moe": {"num_experts": 4, "router": "hash"}}}, "pretrain.model.moe.router"),
    ({"parallel": {"pp": 1, "pp_schedule": "gpipe"}}, "pretrain.parallel.pp_schedule"),
    ({"train": {"compile": True}}, "pretrain.train.compile"),
    ({"train": {"fp8": True, "fp8_emulate": True}}, "pretrain.train.fp8_emulate"),
    ({"train": {"fp8": True, "fp8_recipe": "rowwise"}}, "pretrain.train.fp8_recipe"),
    ({"spike": {"policy": "rollback"}, "checkpoint": {"interval": 2}}, "pretrain.spike.policy"),
    ({"checkpoint": {"async_save": True}}, "pretrain.checkpoint.async_save"),
    ({"megatron": {"fp8_first_last_bf16": True}, "train": {"fp8": True}}, "pretrain.megatron.fp8_first_last_bf16"),
    ({"megatron": {"fp8_amax_history_len": 0}}, "pretrain.megatron.fp8_amax_history_len"),
])
def test_untranslatable_keys_fail_validation(make_config, section, key):
    with pytest.raises(ConfigError) as err:
        _load(make_config, **section)
    assert err.value.key == key and "backend=megatron" in str(err.value)


def test_cpu_device_and_no_gpus_fail_before_submission(make_config):
    with pytest.raises(ConfigError) as err:
        _load(make_config, resources={"tasks": 1})
    assert err.value.key == "resources.pretrain.gpus_per_node" and "CUDA GPUs" in str(err.value)
    data = {"run": {"stages": ["pretrain"]}, "resources": {"pretrain": GPU},
            "pretrain": {"backend": "megatron", **tiny_pretrain()}}  # tiny_pretrain runs on device cpu
    with pytest.raises(ConfigError) as err:
        load_config(make_config(data))
    assert err.value.key == "pretrain.train.device"


def test_native_limits_do_not_apply(make_config):
    """Layouts the native backend refuses but megatron-core runs (tp with MoE, tied embeddings with pp)."""
    cfg = _load(make_config, resources={"tasks": 2, "gpus_per_node": 2}, parallel={"tp": 2},
                model={"moe": {"num_experts": 4}})
    assert cfg.pretrain.backend == "megatron"
    _load(make_config, resources={"tasks": 2, "gpus_per_node": 2}, parallel={"pp": 2},
          model={"tie_embeddings": True})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_preflight_refuses_local_run_without_cuda(make_config):
    from lmhpc.stages import STAGES

    cfg = _load(make_config)
    problems = STAGES["pretrain"].run_preflight(cfg)
    assert any(p.startswith("pretrain.backend:") and "CUDA" in p for p in problems)
    native = load_config(make_config({"run": {"stages": ["pretrain"]}, "pretrain": tiny_pretrain()}, "n.yaml"))
    assert STAGES["pretrain"].run_preflight(native) == []


# ---------------------------------------------------------------------------------------------
# checkpoint conversion


@pytest.mark.parametrize("spec", ["local", "te"])
@pytest.mark.parametrize("heads, kv, tied", [(4, 4, False), (4, 2, False), (8, 1, True)])
def test_conversion_round_trip_is_exact(spec, heads, kv, tied):
    args = ModelArgs(vocab_size=80, dim=64, n_layers=2, n_heads=heads, n_kv_heads=kv, tie_embeddings=tied)
    state = {k: v.detach() for k, v in Transformer(args, init_seed=1).state_dict().items()}
    if tied:
        del state["output.weight"]
    theirs = to_megatron(state, args, spec)
    qkv = theirs["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv.shape == ((heads + 2 * kv) * args.head_dim, 64)
    assert theirs["decoder.layers.1.mlp.linear_fc1.weight"].shape == (2 * args.hidden_dim, 64)
    assert ("output_layer.weight" in theirs) == (not tied)
    norm_key = ("decoder.layers.0.self_attention.linear_qkv.layer_norm_weight" if spec == "te"
                else "decoder.layers.0.input_layernorm.weight")
    assert norm_key in theirs and megatron_spec_of(theirs) == spec
    back = from_megatron(theirs, args)
    assert back.keys() == state.keys()
    for k in state:
        assert torch.equal(back[k], state[k]), k


def test_fused_qkv_grouping():
    """Group g of linear_qkv holds its query heads, then its key head, then its value head; Q/K rows of each
    head are in half-split RoPE order (pairs (j, j + d/2) instead of (2j, 2j + 1))."""
    args = ModelArgs(vocab_size=8, dim=8, n_layers=1, n_heads=4, n_kv_heads=2)  # head_dim 2... use 4 heads of 2
    hd = args.head_dim
    wq = torch.arange(4 * hd, dtype=torch.float32)[:, None].repeat(1, 8)
    wk = 100 + torch.arange(2 * hd, dtype=torch.float32)[:, None].repeat(1, 8)
    wv = 200 + torch.arange(2 * hd, dtype=torch.float32)[:, None].repeat(1, 8)
    rows = fuse_qkv(wq, wk, wv, args)[:, 0].tolist()
    assert rows == [0, 1, 2, 3, 100, 101, 200, 201, 4, 5, 6, 7, 102, 103, 202, 203]
    wide = ModelArgs(vocab_size=8, dim=16, n_layers=1, n_heads=2, n_kv_heads=1)  # head_dim 8
    q = torch.arange(16, dtype=torch.float32)[:, None]
    k = v = torch.zeros(8, 1)
    assert fuse_qkv(q, k, v, wide)[:8, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.equal(split_qkv(fuse_qkv(q, k, v, wide), wide)[0], q)


def test_unconvertible_models_are_refused():
    for args in (ModelArgs(vocab_size=8, layer_pattern="MA"), ModelArgs(vocab_size=8, mup_base_dim=64),
                 ModelArgs(vocab_size=8, moe=MoEArgs(num_experts=4))):
        with pytest.raises(UnsupportedModel):
            to_megatron({}, args)


@pytest.mark.parametrize("heads, kv, tied", [(4, 2, False), (4, 1, True)])
def test_megatron_gpt_model_gives_our_logits(heads, kv, tied):
    """megatron-core's GPTModel (local spec) with converted weights: same logits as our Transformer (fp32 on
    CPU; see tests/train/megatron_gpt_probe.py for what runs)."""
    out = subprocess.run([sys.executable, "-m", "tests.train.megatron_gpt_probe", str(heads), str(kv),
                          str(int(tied))], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing"] == [] and result["unexpected"] == []
    assert result["max_abs_diff"] < 1e-5 * max(1.0, result["max_abs_logit"])
    assert result["state_round_trip_exact"] and result["checkpoint_layout_exact"]


def test_training_entry_refuses_without_cuda():
    from lmhpc.train.megatron.stage import run

    if torch.cuda.is_available():
        pytest.skip("checks the refusal on a machine without CUDA")
    with pytest.raises(RuntimeError, match="CUDA GPUs only"):
        run(None)


# ---------------------------------------------------------------------------------------------
# data


@pytest.fixture
def world_of_one():
    """A one-rank gloo process group (megatron's dataset cache is written by rank 0), removed afterwards."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_blend_reads_through_megatron_builder(tmp_path, prepared_inputs, world_of_one):
    """The tokenize stage's prefixes and blend.json through the translated GPTDatasetConfig and megatron-core's
    BlendedMegatronDatasetBuilder: the same samples, in the same order, as the native backend reads."""
    from lmhpc.data.blend import BLEND_FILE, read_blend
    from lmhpc.train.data import GlobalBatches, TokenIds

    prefixes, weights, eod = read_blend(prepared_inputs / "tokenize" / BLEND_FILE)
    ids = TokenIds(96, eod)
    config = translate.dataset_config(prefixes, weights, 32, seed=5, cache_dir=tmp_path / "mc", token_ids=ids)
    dataset = translate.build_train_dataset(config, num_samples=40)
    native = GlobalBatches(prefixes, weights, 32, 8, num_samples=40, seed=5, cache_dir=tmp_path / "native",
                           token_ids=ids)
    assert len(dataset) == len(native.dataset) >= 40
    tokens, labels = native.samples(range(12))
    for i in range(12):
        item = dataset[i]
        assert torch.equal(item["tokens"], tokens[i]) and item["tokens"].shape == (32,)
        assert torch.equal(item["labels"][item["loss_mask"] > 0], labels[i][labels[i] >= 0])
    assert int(tokens.max()) < 96 and (tokens == eod).any()
    assert Path(config.path_to_cache).is_dir()
