"""Our ``pretrain`` config in megatron-core's terms.

Every key of :class:`~lmhpc.train.config.PretrainConfig` is handled here: translated (the table below) or
refused by :func:`problems`, which ``PretrainConfig.validate`` turns into a ``ConfigError`` naming the key
before anything is submitted.

=============================================  ===========================================================
ours                                           megatron-core
=============================================  ===========================================================
model.dim / n_layers / n_heads / n_kv_heads    hidden_size / num_layers / num_attention_heads /
                                               num_query_groups (grouped-query attention)
model.ffn_hidden, ffn_multiple_of              ffn_hidden_size (the resolved SwiGLU hidden size);
                                               gated_linear_unit + silu
model.norm_eps                                 normalization=RMSNorm, layernorm_epsilon
model.rope_theta, max_seq_len                  GPTModel rotary_base, max_sequence_length (position_embedding rope)
model.tie_embeddings                           share_embeddings_and_output_weights
model.init_std, embedding_init_std,            init_method_std, embedding_init_method_std,
depth_scaled_init                              output_layer_init_method (std / sqrt(2·layers) when true)
model.layer_pattern                            attention only ("A"); Mamba layers refused
model.mup_base_dim                             refused (> 0)
model.moe.*                                    num_moe_experts, moe_router_topk, moe_layer_freq (as a list:
                                               our placement), moe_ffn_hidden_size, moe_expert_capacity_factor
                                               (+ drop policy "position", our token order), moe_aux_loss_coeff
                                               (aux_loss balancing), moe_z_loss_coeff; router "hash" refused
model.mamba.*                                  no effect without Mamba layers
model.vocab_size, train.vocab_multiple_of      the padded vocabulary (GPTModel vocab_size)
parallel.tp / sequence_parallel                tensor_model_parallel_size / sequence_parallel
parallel.pp / pp_stages_per_rank               pipeline_model_parallel_size / virtual_pipeline_model_parallel_size
parallel.pp_schedule                           1f1b, interleaved_1f1b (with virtual stages); gpipe refused
parallel.pp_microbatches                       pipeline micro-batches per optimizer micro-batch
parallel.cp / cp_impl                          context_parallel_size / cp_comm_type (ring "p2p"; allgather_kv →
                                               "all_gather"); cp_rotate=alltoall refused
parallel.ep                                    expert_model_parallel_size
parallel.dp_shard / dp_replicate               data parallel = world / (tp·pp·cp); dp_shard > 1: distributed
                                               optimizer, dp_replicate > 1: num_distributed_optimizer_instances
train.steps / seq_len / seed                   train iterations / sequence length / seeds (model and data)
train.micro_batch_size, grad_accum             micro_batch_size (÷ pipeline micro-batches), num_microbatches
train.precision                                bf16 (params_dtype fp32 master weights, bf16 compute) or fp32
train.fp8 + megatron.fp8_recipe, fp8_format,   fp8 (hybrid / e4m3), fp8_recipe delayed / tensorwise (current
megatron.fp8_amax_history_len,                 scaling), fp8_amax_history_len, first_last_layers_bf16 with
megatron.fp8_bf16_first_layers / last_layers   num_layers_at_start_in_bf16 / num_layers_at_end_in_bf16
train.fp8_recipe                               torchao's names: tensorwise only (the megatron recipe is
                                               megatron.fp8_recipe); rowwise refused
train.fp8_emulate, train.compile               refused when true
train.activation_checkpointing                 recompute_granularity full, method uniform, 1 layer
train.device                                   cuda / auto (cpu refused); train.meta_init: megatron always builds
                                               each rank's shards only
optimizer.*                                    OptimizerConfig (adam: lr, min_lr = lr·min_lr_ratio, betas, eps,
                                               weight_decay, clip_grad); warmup_steps, schedule, decay_fraction:
                                               the loop sets each step's lr from lmhpc.train.optim.lr_at (the
                                               native backend's curve, step for step)
spike.policy                                   off, skip (the update is not applied); rollback refused
checkpoint.*                                   dist-checkpoint step folders; async_save refused
data.*                                         GPTDatasetConfig + BlendedMegatronDatasetBuilder (the blend)
metrics.*, init_from                           same metrics; init_from converted with lmhpc.exchange.megatron
                                               (tp = pp = 1)
eval.interval                                  refused (> 0): held-out evaluation is native-only
=============================================  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmhpc.train.config import PretrainConfig
    from lmhpc.train.data import TokenIds

CP_COMM = {"auto": "p2p", "dtensor": "p2p", "allgather_kv": "all_gather"}


def problems(cfg: PretrainConfig) -> list[tuple[str, str]]:
    """(key, reason) for each setting the Megatron-Core backend cannot express."""
    m, p, t = cfg.model, cfg.parallel, cfg.train
    out: list[tuple[str, str]] = []
    if set(m.layer_pattern) != {"A"}:
        out.append(("model.layer_pattern", f"{m.layer_pattern!r}: Mamba layers are not available in the megatron "
                    "backend (megatron-core GPT models are attention-only); use backend=native"))
    if m.mup_base_dim:
        out.append(("model.mup_base_dim", "μP has no megatron-core equivalent; use backend=native"))
    if m.moe.num_experts and m.moe.router == "hash":
        out.append(("model.moe.router", "hash routing has no megatron-core equivalent (use topk)"))
    if p.pp_schedule == "gpipe":
        out.append(("parallel.pp_schedule", "megatron-core runs 1F1B (interleaved with virtual stages); gpipe is "
                    "native-only"))
    if p.cp > 1 and p.cp_rotate != "allgather":
        out.append(("parallel.cp_rotate", "only the native dtensor ring uses it; megatron's ring (cp_comm_type p2p) "
                    "has no such choice: leave it at allgather"))
    if t.device == "cpu":
        out.append(("train.device", "the megatron backend runs on CUDA GPUs only (Transformer Engine / NCCL); use "
                    "backend=native on CPU"))
    if t.compile:
        out.append(("train.compile", "not used by the megatron backend (fused Transformer Engine kernels): set "
                    "false"))
    if t.fp8 and t.fp8_emulate:
        out.append(("train.fp8_emulate", "emulated float8 is a torchao feature of the native backend"))
    if t.fp8 and t.fp8_recipe != "tensorwise":
        out.append(("train.fp8_recipe", f"{t.fp8_recipe!r} is a torchao recipe; the megatron backend's FP8 recipe "
                    "is pretrain.megatron.fp8_recipe (delayed or tensorwise)"))
    if t.fp8 and (m.dim % 16 or m.hidden_dim % 16):
        out.append(("train.fp8", "Transformer Engine FP8 GEMMs need dim and the FFN hidden size divisible by 16"))
    if cfg.spike.policy == "rollback":
        out.append(("spike.policy", "rollback is native-only; the megatron backend can skip spikes (policy skip) "
                    "or not (off)"))
    if cfg.checkpoint.async_save:
        out.append(("checkpoint.async_save", "the megatron backend saves synchronously (set false)"))
    if cfg.eval.interval:
        out.append(("eval.interval", "held-out evaluation during training is native-only (evaluate the "
                    "checkpoints with the evaluate stage)"))
    if cfg.init_from and (p.tp > 1 or p.pp > 1):
        out.append(("init_from", "starting weights load into the megatron model with tp = pp = 1 only"))
    mo = cfg.megatron
    if mo.fp8_bf16_first_layers < 0 or mo.fp8_bf16_last_layers < 0:
        out.append(("megatron.fp8_bf16_first_layers", "must be >= 0"))
    elif mo.fp8_first_last_bf16 and mo.fp8_bf16_first_layers + mo.fp8_bf16_last_layers >= m.n_layers:
        out.append(("megatron.fp8_first_last_bf16", f"{mo.fp8_bf16_first_layers} + {mo.fp8_bf16_last_layers} bf16 "
                    f"layers leave no FP8 layer of model.n_layers={m.n_layers}"))
    if mo.fp8_first_last_bf16 and not t.fp8:
        out.append(("megatron.fp8_first_last_bf16", "needs train.fp8=true"))
    if mo.fp8_first_last_bf16 and mo.fp8_recipe == "delayed":
        out.append(("megatron.fp8_first_last_bf16", "megatron-core keeps first/last layers in bf16 under current "
                    "scaling only: set megatron.fp8_recipe=tensorwise"))
    if mo.fp8_amax_history_len < 1:
        out.append(("megatron.fp8_amax_history_len", "must be >= 1"))
    return out


@dataclass
class Schedule:
    """Batch sizes in megatron's terms (per data-parallel rank)."""

    data_parallel: int
    micro_batch_size: int  # sequences per pipeline micro-batch
    num_microbatches: int  # micro-batches per optimizer step
    global_batch: int


def schedule(cfg: PretrainConfig, world: int) -> Schedule:
    """Our micro-batch (per data-parallel rank, split into ``pp_microbatches`` when pipelined) × grad_accum
    as megatron's micro_batch_size × num_microbatches; the global batch is the same."""
    p = cfg.parallel.resolved(world)
    dp = world // (p.tp * p.pp * p.cp)
    split = p.microbatches if p.pp > 1 else 1
    mbs = cfg.train.micro_batch_size // split
    return Schedule(dp, mbs, cfg.train.grad_accum * split, cfg.global_batch(dp))


def moe_layer_pattern(cfg: PretrainConfig) -> list[int]:
    """Our MoE placement (layer ``i`` when ``i % every == every - 1``) as megatron's per-layer list."""
    return [int(cfg.model.layer_has_moe(i)) for i in range(cfg.model.n_layers)]


def transformer_config_kwargs(cfg: PretrainConfig, world: int) -> dict[str, Any]:
    """Keyword arguments of megatron-core's ``TransformerConfig`` (torch objects: dtypes, init functions)."""
    import torch
    import torch.nn.functional as F

    m, t, mo = cfg.model, cfg.train, cfg.megatron
    p = cfg.parallel.resolved(world)
    bf16 = t.precision == "bf16"
    kw: dict[str, Any] = {
        "num_layers": m.n_layers, "hidden_size": m.dim, "num_attention_heads": m.n_heads,
        "num_query_groups": m.kv_heads, "kv_channels": m.head_dim, "ffn_hidden_size": m.hidden_dim,
        "gated_linear_unit": True, "activation_func": F.silu, "normalization": "RMSNorm",
        "layernorm_epsilon": m.norm_eps, "add_bias_linear": False, "add_qkv_bias": False,
        "hidden_dropout": 0.0, "attention_dropout": 0.0, "rotary_interleaved": False,
        "init_method_std": m.init_std, "embedding_init_method_std": m.embedding_init_std,
        "tensor_model_parallel_size": p.tp, "sequence_parallel": p.tp > 1 and p.sequence_parallel,
        "pipeline_model_parallel_size": p.pp, "context_parallel_size": p.cp,
        "expert_model_parallel_size": p.ep,
        "bf16": bf16, "params_dtype": torch.float32, "pipeline_dtype": torch.bfloat16 if bf16 else torch.float32,
        "autocast_dtype": torch.bfloat16 if bf16 else torch.float32,
        "calculate_per_token_loss": True,  # loss averaged over the step's tokens, as the native backend does
    }
    if not m.depth_scaled_init:
        from megatron.core.utils import init_method_normal

        kw["output_layer_init_method"] = init_method_normal(m.init_std)
    if p.pp > 1 and p.pp_stages_per_rank > 1:
        kw["virtual_pipeline_model_parallel_size"] = p.pp_stages_per_rank
    if p.cp > 1:
        kw["cp_comm_type"] = CP_COMM[p.cp_impl]
    if m.moe.num_experts:
        mo_ = m.moe
        kw.update({"num_moe_experts": mo_.num_experts, "moe_router_topk": mo_.top_k,
                   "moe_layer_freq": moe_layer_pattern(cfg), "moe_ffn_hidden_size": mo_.expert_hidden or m.hidden_dim,
                   "moe_router_load_balancing_type": "aux_loss", "moe_aux_loss_coeff": mo_.load_balance_coef,
                   "moe_z_loss_coeff": mo_.z_loss_coef or None, "moe_router_pre_softmax": False,
                   "moe_token_dispatcher_type": "alltoall"})
        if mo_.capacity_factor > 0:
            kw.update({"moe_expert_capacity_factor": mo_.capacity_factor, "moe_token_drop_policy": "position"})
    if t.activation_checkpointing == "full":
        kw.update({"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1})
    if t.fp8:
        kw.update({"fp8": mo.fp8_format, "fp8_recipe": mo.fp8_recipe, "fp8_amax_history_len": mo.fp8_amax_history_len,
                   "fp8_amax_compute_algo": "max"})
        if mo.fp8_first_last_bf16:
            kw.update({"first_last_layers_bf16": True, "num_layers_at_start_in_bf16": mo.fp8_bf16_first_layers,
                       "num_layers_at_end_in_bf16": mo.fp8_bf16_last_layers})
    return kw


def transformer_config(cfg: PretrainConfig, world: int):
    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(**transformer_config_kwargs(cfg, world))


def te_available() -> bool:
    """Whether Transformer Engine's PyTorch extension imports here."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a broken build (missing CUDA libraries)
        return False
    return True


def resolve_spec(choice: str, have_te: bool) -> str:
    """``auto``: the Transformer Engine spec when TE imports, the local spec otherwise."""
    if choice == "auto":
        return "te" if have_te else "local"
    if choice == "te" and not have_te:
        raise RuntimeError("pretrain.megatron.spec=te but transformer_engine does not import on this machine; "
                           "run in the NeMo/PyTorch container (env/) or use spec=local (bf16 only)")
    return choice


def layer_spec(cfg: PretrainConfig, spec: str):
    """megatron-core's GPT layer spec: Transformer Engine modules (``te``) or plain PyTorch ones (``local``)."""
    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.models.gpt import gpt_layer_specs

    experts = cfg.model.moe.num_experts or None
    if spec == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(num_experts=experts,
                                                                          moe_grouped_gemm=bool(experts))
    if cfg.train.fp8:
        raise RuntimeError("pretrain.train.fp8 needs the Transformer Engine spec (megatron.spec te or auto with TE "
                           "installed): the local spec has no FP8 GEMMs")
    return gpt_layer_specs.get_gpt_layer_local_spec(num_experts=experts, normalization="RMSNorm")


def gpt_model_kwargs(cfg: PretrainConfig, vocab_size: int) -> dict[str, Any]:
    """Keyword arguments of ``GPTModel`` besides the config and the layer spec."""
    return {"vocab_size": vocab_size, "max_sequence_length": cfg.model.max_seq_len,
            "position_embedding_type": "rope", "rotary_base": int(cfg.model.rope_theta), "rotary_percent": 1.0,
            "share_embeddings_and_output_weights": cfg.model.tie_embeddings, "parallel_output": True}


def optimizer_config(cfg: PretrainConfig, world: int):
    import torch

    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.optimizer import OptimizerConfig

    o, p = cfg.optimizer, cfg.parallel.resolved(world)
    return OptimizerConfig(optimizer="adam", lr=o.lr, min_lr=o.lr * o.min_lr_ratio, weight_decay=o.weight_decay,
                           adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_eps=o.eps,
                           clip_grad=o.grad_clip if o.grad_clip > 0 else 0.0, bf16=cfg.train.precision == "bf16",
                           params_dtype=torch.float32,
                           use_distributed_optimizer=cfg.megatron.distributed_optimizer and p.dp_shard != 1)


def ddp_config(cfg: PretrainConfig, world: int):
    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.distributed import DistributedDataParallelConfig

    p = cfg.parallel.resolved(world)
    distributed = cfg.megatron.distributed_optimizer and p.dp_shard != 1
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=cfg.megatron.overlap_grad_reduce,
        overlap_param_gather=distributed and cfg.megatron.overlap_param_gather,
        use_distributed_optimizer=distributed,
        num_distributed_optimizer_instances=p.dp_replicate if distributed else 1,
        average_in_collective=False)


def dataset_config(prefixes: list[str], weights: list[float] | None, seq_len: int, seed: int, cache_dir: Path,
                   token_ids: TokenIds):
    """megatron-core's ``GPTDatasetConfig`` over the run's blend (the sample order of the native backend)."""
    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.datasets.gpt_dataset import GPTDatasetConfig

    return GPTDatasetConfig(random_seed=seed, sequence_length=seq_len, blend=(prefixes, weights), split="100,0,0",
                            path_to_cache=str(cache_dir), tokenizer=token_ids, reset_position_ids=False,
                            reset_attention_mask=False, eod_mask_loss=False, create_attention_mask=False)


def build_train_dataset(config, num_samples: int):
    """The blended training dataset (``BlendedMegatronDatasetBuilder``)."""
    from lmhpc.train.data import quiet_megatron

    with quiet_megatron():
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset

    Path(config.path_to_cache).mkdir(parents=True, exist_ok=True)
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, 0, 0], lambda: True, config).build()
    return train
