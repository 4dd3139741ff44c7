"""Configuration shared by every alignment stage: the training loop (:class:`AlignTrainConfig`) and LoRA
(:class:`LoRAConfig`). A stage's config holds them as sections (``<stage>.train``, ``<stage>.lora``) and calls
their ``validate_at(prefix, root, stage)`` from its own ``validate(root)``, so errors name the full key."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

LORA_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")


def _fail(key: str, message: str) -> None:
    from lmhpc.config import ConfigError

    raise ConfigError(key, message)


@dataclass
class AlignTrainConfig:
    """The loop of an alignment stage: optimizer steps, AdamW with linear warmup then cosine (or constant)
    decay, batch sizes, precision, checkpoints, data parallelism (FSDP2 over ``dp_shard`` ranks).

    ``global_batch_size`` examples (sequences, pairs or prompts: the stage says which) make one optimizer
    step; each rank runs ``global_batch_size / (micro_batch_size × dp)`` micro-batches of
    ``micro_batch_size`` per step (gradient accumulation)."""

    steps: int = 100
    lr: float = 2e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0  # <= 0: no clipping
    micro_batch_size: int = 4  # per data-parallel rank
    global_batch_size: int = 8  # per optimizer step, all ranks
    max_len: int = 512  # tokens per sequence (longer records are quarantined)
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int = -1  # -1: run.seed
    checkpoint_interval: int = 50  # steps; 0: only on preemption and at the end
    keep_last: int = 2
    dp_shard: int = -1  # -1: the world size (FSDP2 over every rank when > 1)
    log_every: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def world_size(self, root: RunConfig, stage: str) -> int:
        res = root.resources_for(stage)
        return res.tasks * res.nodes

    def dp(self, world: int) -> int:
        return world if self.dp_shard == -1 else self.dp_shard

    def grad_accum(self, dp: int) -> int:
        """Micro-batches per rank per optimizer step."""
        return self.global_batch_size // (self.micro_batch_size * dp)

    def validate_at(self, prefix: str, root: RunConfig, stage: str) -> None:
        """Raise :class:`lmhpc.config.ConfigError` naming ``<prefix>.<key>`` for the first bad value."""
        def fail(key: str, message: str) -> None:
            _fail(f"{prefix}.{key}", message)

        for key in ("steps", "micro_batch_size", "global_batch_size", "max_len", "keep_last", "log_every"):
            if getattr(self, key) < 1:
                fail(key, f"must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0:
            fail("lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            fail("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_steps <= self.steps:
            fail("warmup_steps", f"must be in [0, steps={self.steps}], got {self.warmup_steps}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail("betas", f"two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            fail("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.checkpoint_interval < 0:
            fail("checkpoint_interval", f"must be >= 0 (0: only on preemption and at the end), got "
                 f"{self.checkpoint_interval}")
        world = self.world_size(root, stage)
        if self.dp_shard != -1 and self.dp_shard < 1:
            fail("dp_shard", f"must be >= 1 or -1 (the world size), got {self.dp_shard}")
        dp = self.dp(world)
        if dp != world:
            fail("dp_shard", f"{dp} ranks of data parallelism but resources.{stage} asks for {world} processes "
                 "(alignment stages run FSDP2 over every rank: dp_shard = world size)")
        if self.global_batch_size % (self.micro_batch_size * dp):
            fail("global_batch_size", f"{self.global_batch_size} is not a multiple of micro_batch_size × dp = "
                 f"{self.micro_batch_size} × {dp}")


@dataclass
class LoRAConfig:
    """Low-rank adapters (``rank`` 0: full fine-tuning). Each target linear ``W`` computes
    ``W x + (alpha / rank) · B A dropout(x)``; ``W`` is frozen, ``A`` (rank × in) and ``B`` (out × rank, zeros at
    first) train. Saved models have ``B A`` merged into ``W``. ``targets``: module names (wq wk wv wo of attention,
    w1 w2 w3 of the SwiGLU FFN, output).

    ``base``: how the frozen base is held. ``float``: as loaded. ``nf4`` (QLoRA): every block linear (wq wk wv wo
    w1 w2 w3; not the embedding, norms or output head) becomes 4-bit NF4 with double quantization
    (:class:`lmhpc.quantize.qlinear.NF4Linear`, about 4.1 bits a weight in memory), quantized from the starting
    model at every start; the saved model is plain float: each NF4 layer's dequantized weight, plus ``B A`` for a
    target. Needs ``rank > 0``. Under FSDP2 (``train.dp_shard`` > 1) the NF4 codes are buffers, which FSDP2 does
    not shard: every rank holds the whole 4-bit base (about 0.52 bytes a weight), the embedding, norms and head
    are sharded as usual."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["wq", "wk", "wv", "wo"])
    base: Literal["float", "nf4"] = "float"

    @property
    def nf4(self) -> bool:
        return self.enabled and self.base == "nf4"

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def validate_at(self, prefix: str) -> None:
        """Raise :class:`lmhpc.config.ConfigError` naming ``<prefix>.<key>`` for the first bad value."""
        if self.rank < 0:
            _fail(f"{prefix}.rank", f"must be >= 0 (0: full fine-tuning), got {self.rank}")
        if self.base not in ("float", "nf4"):
            _fail(f"{prefix}.base", f"must be 'float' or 'nf4' (QLoRA), got {self.base!r}")
        if self.base == "nf4" and not self.enabled:
            _fail(f"{prefix}.base", f"nf4 (QLoRA) trains adapters on a frozen 4-bit base: it needs {prefix}.rank > 0, "
                  f"got {self.rank}")
        if not self.enabled:
            return
        if self.alpha <= 0:
            _fail(f"{prefix}.alpha", f"must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            _fail(f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")
        if not self.targets:
            _fail(f"{prefix}.targets", f"name at least one module of {list(LORA_TARGETS)}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown:
            _fail(f"{prefix}.targets", f"unknown modules {unknown}; choose from {list(LORA_TARGETS)}")


MODEL_STAGES = ("pretrain",)  # the model stages sft may start from (init_from empty: the latest the run chains)
CONSTITUTIONAL = "constitutional"  # its sft.jsonl (critique-and-revision answers) joins the data when chained


@dataclass
class SftConfig:
    """Supervised fine-tuning on chat data: jsonl lines ``{"messages": [{"role", "content"}, ...]}`` rendered with
    the tokenizer's chat template, loss on the assistant turns only.

    - ``data``: files or globs (relative to the config file); when the run chains the ``constitutional`` stage,
      its ``sft.jsonl`` joins them.
    - ``packing``: several conversations per row of ``train.max_len`` tokens, each attending to itself only
      (positions restart at 0 per conversation); ``train.global_batch_size`` then counts rows. Without it each
      conversation is one row, padded to the longest of its micro-batch.
    - ``init_from``: the starting model (anything ``lmhpc.exchange.load_model`` opens); empty: the latest of
      the run's model stages (pretrain).
    - ``lora``: ``rank > 0`` trains low-rank adapters (merged into the saved model) instead of every weight.
    """

    data: list[str] = field(default_factory=list)
    init_from: str = ""
    packing: bool = False
    train: AlignTrainConfig = field(default_factory=AlignTrainConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("train.checkpoint_interval", "train.keep_last",
                                                      "train.log_every", "train.dp_shard", "train.device")

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        from lmhpc.exchange.source import model_reads

        reads = model_reads(default, root, self.init_from, MODEL_STAGES)
        return tuple(s for s in reads if s != CONSTITUTIONAL or s in root.run.stages)

    def data_files(self, root: RunConfig) -> list[Path]:
        """The files ``data`` names, in config order (a glob's matches sorted); raises ConfigError naming
        ``sft.data`` for an entry that matches nothing."""
        files: list[Path] = []
        for i, entry in enumerate(self.data):
            path = root.path(entry)
            matches = sorted(Path(p) for p in glob.glob(str(path))) if glob.has_magic(str(path)) else \
                ([path] if path.exists() else [])
            matches = [m for m in matches if m.is_file()]
            if not matches:
                _fail(f"sft.data[{i}]", f"{entry!r} matches no file ({path})")
            files += [m for m in matches if m not in files]
        return files

    def validate(self, root: RunConfig) -> None:
        self.train.validate_at("sft.train", root, "sft")
        self.lora.validate_at("sft.lora")
        self.data_files(root)
        if "sft" not in root.run.stages:
            return
        if not self.data and CONSTITUTIONAL not in root.run.stages:
            _fail("sft.data", "no chat data: name jsonl files (e.g. data/align/chat/chat.jsonl) or chain the "
                  "constitutional stage before sft in run.stages")
        if self.init_from:
            if not root.path(self.init_from).exists():
                _fail("sft.init_from", f"{root.path(self.init_from)} does not exist")
        elif not any(s in root.run.stages for s in MODEL_STAGES):
            _fail("sft.init_from", f"sft starts from a model: set sft.init_from or chain one of {list(MODEL_STAGES)} "
                  "before it in run.stages")
