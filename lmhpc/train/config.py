"""Configuration of the pretrain stage (torch-native backend): model, parallelism, training, data,
checkpoints, metrics. Every size is checked against the others and against the world size the
``resources.pretrain`` section asks for, before anything is submitted."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lmhpc.model.args import LAYER_KINDS, ModelArgs

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


@dataclass
class ParallelConfig:
    """Sizes of the device mesh ``pp × dp_replicate × dp_shard × cp × tp`` (their product is the world size).

    - ``dp_shard > 1`` (or ``cp > 1``): FSDP2 over ``dp_shard × cp``; with ``dp_replicate > 1`` too: HSDP.
    - ``dp_replicate > 1`` alone: DDP (FSDP2 over those ranks when ``pp > 1``: DDP cannot follow a pipeline schedule).
    - ``tp > 1`` always comes with sequence parallel in this backend.
    - ``tp``: tensor parallel (+ sequence parallel); ``pp``: pipeline stages; ``cp``: context parallel,
      ``cp_impl`` ``dtensor`` (PyTorch ring attention, GPU only) or ``allgather_kv`` (any device).
    - ``ep``: expert parallel, borrowed from ``dp_shard`` (it divides it): each group of ``ep`` ranks
      splits the MoE experts and exchanges tokens by all-to-all; the world size does not change.
    """

    dp_replicate: int = 1
    dp_shard: int = -1  # -1: whatever the world size leaves
    tp: int = 1
    sequence_parallel: bool = True
    pp: int = 1
    pp_schedule: Literal["1f1b", "interleaved_1f1b", "gpipe"] = "1f1b"
    pp_microbatches: int = 0  # per optimizer micro-batch; 0: pp × stages_per_rank
    pp_stages_per_rank: int = 1  # virtual stages per rank (interleaved_1f1b needs >= 2)
    cp: int = 1
    cp_impl: Literal["auto", "allgather_kv", "dtensor"] = "auto"  # auto: dtensor on CUDA without compile
    cp_rotate: Literal["allgather", "alltoall"] = "allgather"  # how dtensor ring attention passes KV shards
    ep: int = 1  # expert parallel: MoE experts split over this many of the dp_shard ranks (not a mesh factor)

    def resolved(self, world_size: int) -> ParallelConfig:
        """A copy with ``dp_shard`` inferred from the world size (raises ValueError if it cannot be)."""
        other = self.dp_replicate * self.tp * self.pp * self.cp
        dp_shard = self.dp_shard
        if dp_shard == -1:
            if world_size % other:
                raise ValueError(f"world size {world_size} is not divisible by dp_replicate×tp×pp×cp = {other}")
            dp_shard = world_size // other
        if dp_shard * other != world_size:
            raise ValueError(f"dp_replicate×dp_shard×tp×pp×cp = {dp_shard * other} but the world size is {world_size}")
        return ParallelConfig(**{**self.__dict__, "dp_shard": dp_shard})

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different micro-batches a step sees at once."""
        return self.dp_replicate * max(self.dp_shard, 1)

    @property
    def microbatches(self) -> int:
        return self.pp_microbatches or self.pp * self.pp_stages_per_rank


@dataclass
class OptimizerConfig:
    """AdamW with warmup then cosine / WSD decay; gradient clipping."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    decay_fraction: float = 0.2  # wsd: the last fraction of steps decays linearly
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # <= 0: no clipping


@dataclass
class SpikeGuardConfig:
    """Loss spike guard: a step whose loss exceeds ``factor`` × the median of the last ``window``
    losses, or whose loss or gradient norm is not finite, is a spike. ``skip``: the update is not
    applied; ``rollback``: reload the newest checkpoint and skip the data since then."""

    policy: Literal["off", "skip", "rollback"] = "skip"
    factor: float = 3.0
    window: int = 20
    min_steps: int = 20  # no loss-based detection before this many steps of history
    max_consecutive: int = 5  # this many spikes in a row fails the stage


@dataclass
class CheckpointConfig:
    """DCP step folders ``checkpoints/step-<N>/`` with a ``COMPLETE`` marker."""

    interval: int = 100  # steps; 0: only on preemption and at the end
    keep_last: int = 2
    async_save: bool = False
    save_final: bool = True


@dataclass
class DataConfig:
    """Tokenized data. Empty ``prefixes``: the tokenize stage's ``blend.json``."""

    prefixes: list[str] = field(default_factory=list)  # Megatron .bin/.idx prefixes (no suffix)
    weights: list[float] = field(default_factory=list)  # empty: in proportion to their sizes
    tokenizer: str = ""  # sentencepiece model; empty: <run>/tokenizer/tokenizer.model
    eod_id: int = -1  # -1: the tokenizer's end-of-document id


@dataclass
class TrainConfig:
    """The loop: batch sizes, steps, precision, memory/speed options."""

    steps: int = 100
    seq_len: int = 256
    micro_batch_size: int = 4  # per data-parallel rank
    grad_accum: int = 1
    seed: int = -1  # -1: run.seed
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (and bf16 FSDP all-gathers)
    fp8: bool = False  # torchao float8 linear layers (GPU with compute capability >= 8.9)
    fp8_recipe: Literal["tensorwise", "rowwise"] = "tensorwise"
    fp8_emulate: bool = False  # emulated float8 (any device; for tests)
    activation_checkpointing: Literal["none", "full"] = "none"
    compile: bool = False
    vocab_multiple_of: int = 128  # the embedding is padded to a multiple of this
    # build the model on the meta device, shard it, then allocate and initialise each rank's shards only
    # (same values as the whole model built in one process); false: every rank builds the whole model first
    meta_init: bool = True


@dataclass
class MetricsConfig:
    """What and how often to log (W&B, metrics.jsonl, stats.json)."""

    log_every: int = 1
    peak_tflops: float = 0.0  # 0: from the device (known GPUs); CPU has none, so no MFU unless set


@dataclass
class HeldOutConfig:
    """Held-out perplexity while training (:mod:`lmhpc.train.heldout`): every ``interval`` steps (0: never), on
    at most ``max_tokens`` tokens of ``texts`` (jsonl, parquet or .txt files kept out of the training data)."""

    interval: int = 0
    texts: list[str] = field(default_factory=list)
    max_tokens: int = 16384


@dataclass
class MegatronConfig:
    """Options of the Megatron-Core backend (``backend: megatron``) that the native one has no use for."""

    spec: Literal["auto", "te", "local"] = "auto"  # auto: Transformer Engine layers when TE imports
    fp8_recipe: Literal["delayed", "tensorwise"] = "delayed"  # TE delayed scaling / current (tensorwise) scaling
    fp8_format: Literal["hybrid", "e4m3"] = "hybrid"  # hybrid: e4m3 forward, e5m2 gradients
    fp8_amax_history_len: int = 1024  # delayed scaling's amax history
    fp8_first_last_bf16: bool = False  # keep the first/last layers in bf16 under FP8
    fp8_bf16_first_layers: int = 1
    fp8_bf16_last_layers: int = 1
    distributed_optimizer: bool = True  # shard optimizer states over data parallel (when dp_shard > 1)
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = True


@dataclass
class PretrainConfig:
    """Pretrain stage settings: the torch-native backend (default) or Megatron-Core (``backend: megatron``)."""

    backend: Literal["native", "megatron"] = "native"
    megatron: MegatronConfig = field(default_factory=MegatronConfig)
    model: ModelArgs = field(default_factory=ModelArgs)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    spike: SpikeGuardConfig = field(default_factory=SpikeGuardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    data: DataConfig = field(default_factory=DataConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: HeldOutConfig = field(default_factory=HeldOutConfig)
    # a model to start from (consolidated folder, checkpoint, Hugging Face folder, .gguf) instead of a random init
    init_from: str = ""

    # keys that do not change the loss curve: a preempted run may resume with another parallel layout
    # (checkpoints reshard on load), checkpoint cadence or logging
    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("parallel", "metrics", "checkpoint.interval",
                                                      "checkpoint.keep_last", "checkpoint.async_save", "eval",
                                                      "train.meta_init")

    def global_batch(self, dp: int) -> int:
        """Sequences per optimizer step."""
        return self.train.micro_batch_size * self.train.grad_accum * dp

    def validate(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        def fail(key: str, message: str) -> None:
            raise ConfigError(f"pretrain.{key}", message)

        m, p, t, o = self.model, self.parallel, self.train, self.optimizer
        for key, value in (("model.dim", m.dim), ("model.n_layers", m.n_layers), ("model.n_heads", m.n_heads),
                           ("train.steps", t.steps), ("train.seq_len", t.seq_len),
                           ("train.micro_batch_size", t.micro_batch_size), ("train.grad_accum", t.grad_accum),
                           ("parallel.dp_replicate", p.dp_replicate), ("parallel.tp", p.tp), ("parallel.pp", p.pp),
                           ("parallel.cp", p.cp), ("parallel.pp_stages_per_rank", p.pp_stages_per_rank),
                           ("parallel.ep", p.ep),
                           ("train.vocab_multiple_of", t.vocab_multiple_of),
                           ("metrics.log_every", self.metrics.log_every)):
            if value < 1:
                fail(key, f"must be >= 1, got {value}")
        if p.dp_shard != -1 and p.dp_shard < 1:
            fail("parallel.dp_shard", f"must be >= 1 or -1 (infer), got {p.dp_shard}")
        # model shape
        if m.vocab_size < 0:
            fail("model.vocab_size", "must be >= 0 (0: from the tokenizer)")
        if m.dim % m.n_heads:
            fail("model.dim", f"{m.dim} is not divisible by model.n_heads={m.n_heads}")
        if m.head_dim % 2:
            fail("model.dim", f"head dim {m.head_dim} (dim / n_heads) must be even for rotary embeddings")
        if m.n_kv_heads < 0 or m.n_heads % m.kv_heads:
            fail("model.n_kv_heads", f"n_heads={m.n_heads} must be a multiple of n_kv_heads={m.kv_heads}")
        if not m.layer_pattern or set(m.layer_pattern) - set(LAYER_KINDS):
            fail("model.layer_pattern",
                 f"{m.layer_pattern!r}: use the letters {sorted(LAYER_KINDS)} (A attention, M mamba)")
        if m.max_seq_len < t.seq_len:
            fail("model.max_seq_len", f"{m.max_seq_len} is shorter than train.seq_len={t.seq_len}")
        if m.mup_base_dim < 0 or (m.mup_base_dim and m.mup_base_dim > m.dim):
            fail("model.mup_base_dim", f"must be 0 (standard parametrisation) or in [1, dim={m.dim}]")
        if m.moe.num_experts:
            if m.moe.num_experts < 2:
                fail("model.moe.num_experts", "an MoE needs >= 2 experts (0: dense)")
            if not 1 <= m.moe.top_k <= m.moe.num_experts:
                fail("model.moe.top_k", f"must be in [1, num_experts={m.moe.num_experts}]")
            if m.moe.every < 1:
                fail("model.moe.every", "must be >= 1")
            if t.compile:
                fail("train.compile", "MoE layers route a data-dependent number of tokens to each expert, which "
                     "does not compile into a full graph: set train.compile=false for MoE models")
        # optimisation
        if o.lr <= 0:
            fail("optimizer.lr", "must be > 0")
        if not 0 <= o.min_lr_ratio <= 1:
            fail("optimizer.min_lr_ratio", "must be in [0, 1]")
        if o.warmup_steps < 0 or o.warmup_steps > t.steps:
            fail("optimizer.warmup_steps", f"must be in [0, train.steps={t.steps}]")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            fail("optimizer.betas", "two numbers in [0, 1)")
        if not 0 < o.decay_fraction <= 1:
            fail("optimizer.decay_fraction", "must be in (0, 1]")
        if self.spike.factor <= 1 or self.spike.window < 2 or self.spike.max_consecutive < 1:
            fail("spike", "factor must be > 1, window >= 2, max_consecutive >= 1")
        if self.checkpoint.interval < 0 or self.checkpoint.keep_last < 1:
            fail("checkpoint", "interval must be >= 0 and keep_last >= 1")
        if self.spike.policy == "rollback" and self.checkpoint.interval == 0:
            fail("spike.policy", "rollback needs periodic checkpoints (checkpoint.interval > 0)")
        if self.data.weights and len(self.data.weights) != len(self.data.prefixes):
            fail("data.weights", f"{len(self.data.weights)} weights for {len(self.data.prefixes)} prefixes")
        if any(w <= 0 for w in self.data.weights):
            fail("data.weights", "weights must be > 0")
        if self.init_from and not root.path(self.init_from).exists():
            fail("init_from", f"{root.path(self.init_from)} does not exist")
        if self.eval.interval < 0 or self.eval.max_tokens < 1:
            fail("eval", "interval must be >= 0 and max_tokens >= 1")
        if self.eval.interval and not self.eval.texts:
            fail("eval.texts", "held-out evaluation (eval.interval > 0) needs held-out text files")
        if self.eval.interval and (p.pp > 1 or p.cp > 1):
            fail("eval.interval", "held-out evaluation runs with data and tensor parallel only (pp = cp = 1)")
        # precision
        if t.fp8 and t.fp8_emulate and t.compile:
            fail("train.fp8_emulate", "emulated float8 does not work with train.compile")
        if t.fp8 and (m.dim % 16 or m.hidden_dim % 16):
            fail("train.fp8",
                 f"float8 matmuls need dim ({m.dim}) and the FFN hidden size ({m.hidden_dim}) divisible by 16")
        self._validate_parallel(root, fail)
        if self.backend == "megatron":
            self._validate_megatron(root, fail)

    def _validate_megatron(self, root: RunConfig, fail: Any) -> None:
        from lmhpc.train.megatron.translate import problems

        for key, message in problems(self):
            fail(key, f"backend=megatron: {message}")
        res = root.resources_for("pretrain")
        if not res.gpus_per_node:
            from lmhpc.config import ConfigError

            raise ConfigError(
                "resources.pretrain.gpus_per_node",
                "pretrain.backend=megatron runs on CUDA GPUs only: give the pretrain stage GPUs (one task per GPU) "
                "or use pretrain.backend=native on CPU")

    def _validate_parallel(self, root: RunConfig, fail: Any) -> None:
        m, p, t = self.model, self.parallel, self.train
        native = self.backend == "native"  # limits of the native backend that Megatron-Core does not have
        res = root.resources_for("pretrain")
        world = res.tasks * res.nodes
        try:
            r = p.resolved(world)
        except ValueError as e:
            fail("parallel", f"{e} (resources.pretrain: tasks={res.tasks} × nodes={res.nodes})")
        if r.tp > 1:
            for key, heads in (("model.n_heads", m.n_heads), ("model.n_kv_heads", m.kv_heads)):
                if heads % r.tp:
                    fail(key, f"{heads} heads cannot be split over tp={r.tp}")
            if m.hidden_dim % r.tp:
                fail("model.ffn_hidden", f"FFN hidden size {m.hidden_dim} is not divisible by tp={r.tp}")
            if t.vocab_multiple_of % r.tp:
                fail("train.vocab_multiple_of", f"must be a multiple of tp={r.tp} (the vocabulary is split over tp)")
            if r.sequence_parallel and t.seq_len % (r.tp * r.cp):
                fail("train.seq_len", f"{t.seq_len} is not divisible by tp×cp={r.tp * r.cp} (sequence parallel)")
            if m.moe.num_experts and native:
                fail("parallel.tp", "MoE layers are not tensor-parallel in this backend; use dp/fsdp/pp")
            if "M" in m.layer_pattern:
                fail("parallel.tp", "Mamba layers are not tensor-parallel in this backend")
            if t.fp8 and native:
                fail("train.fp8", "float8 with tensor parallel is not supported by this backend (use tp = 1)")
            if not r.sequence_parallel and native:
                fail("parallel.sequence_parallel", "tensor parallel without sequence parallel is not supported "
                     "by this backend (replicated norm gains would mix plain tensors and DTensors)")
            if r.dp_replicate > 1 and r.dp_shard == 1 and native:
                fail("parallel.dp_replicate", "with tp > 1, data parallelism is FSDP/HSDP: set dp_shard > 1")
        if m.tie_embeddings and (r.tp > 1 or r.pp > 1) and native:
            fail("model.tie_embeddings", "tied embeddings need tp = 1 and pp = 1")
        if r.cp > 1:
            if t.seq_len % (2 * r.cp):
                fail("train.seq_len",
                     f"{t.seq_len} is not divisible by 2×cp={2 * r.cp} (load-balanced context parallel)")
            if r.pp > 1 and native:
                fail("parallel.cp", "context parallel together with pipeline parallel is not supported")
            if "M" in m.layer_pattern:
                fail("parallel.cp", "Mamba layers need the whole sequence: context parallel is attention-only")
            if r.cp_impl == "dtensor" and t.compile:
                fail("parallel.cp_impl", "dtensor (ring attention) together with train.compile is not verified "
                     "in this backend; use cp_impl=allgather_kv (auto picks it under compile) or compile=false")
            if r.cp_impl == "dtensor" and t.device == "cpu":
                fail("parallel.cp_impl", "dtensor (PyTorch ring attention) needs CUDA GPUs and train.device is cpu: "
                     "SDPA on CPU has no DTensor sharding strategy; use allgather_kv or auto")
        if r.ep > 1:
            if not m.moe.num_experts:
                fail("parallel.ep", "expert parallel needs an MoE model (model.moe.num_experts > 0)")
            if m.moe.num_experts % r.ep:
                fail("parallel.ep", f"model.moe.num_experts={m.moe.num_experts} is not divisible by ep={r.ep}")
            if r.dp_shard % r.ep:
                fail("parallel.ep", f"ep={r.ep} must divide dp_shard={r.dp_shard} (it borrows FSDP ranks)")
            if (r.tp > 1 or r.pp > 1 or r.cp > 1) and native:
                fail("parallel.ep", "expert parallel runs with data parallel only in this backend (tp = pp = cp = 1)")
        if r.pp > 1:
            stages = r.pp * r.pp_stages_per_rank
            if m.n_layers < stages:
                fail("model.n_layers", f"{m.n_layers} layers cannot fill pp×stages_per_rank={stages} stages")
            if r.pp_schedule == "interleaved_1f1b" and r.pp_stages_per_rank < 2:
                fail("parallel.pp_stages_per_rank", "interleaved_1f1b needs >= 2 stages per rank")
            if r.pp_schedule != "interleaved_1f1b" and r.pp_stages_per_rank != 1:
                fail("parallel.pp_stages_per_rank", f"{r.pp_schedule} runs one stage per rank")
            if t.micro_batch_size % r.microbatches:
                fail("parallel.pp_microbatches",
                     f"train.micro_batch_size={t.micro_batch_size} must split into {r.microbatches} "
                     "pipeline micro-batches")
            if r.pp_schedule != "gpipe" and r.microbatches < r.pp:
                fail("parallel.pp_microbatches", f"{r.pp_schedule} needs at least pp={r.pp} micro-batches")
            if r.pp_schedule == "interleaved_1f1b" and r.microbatches % r.pp:
                fail("parallel.pp_microbatches", f"interleaved_1f1b needs a multiple of pp={r.pp} micro-batches")
            if m.moe.num_experts and m.moe.router == "hash":
                fail("model.moe.router", "hash routing needs token ids in every layer: not with pp > 1")
        gpus = res.gpus_per_node
        if gpus and gpus != res.tasks:
            fail("parallel", f"torch stages run one process per GPU: resources.pretrain.tasks={res.tasks} "
                 f"but gpus_per_node={gpus}")
        if math.prod((r.pp, r.dp_replicate, r.dp_shard, r.cp, r.tp)) != world:  # pragma: no cover - resolved() checks
            fail("parallel", "mesh does not match the world size")
