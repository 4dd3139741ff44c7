"""Configuration of the medusa stage: Medusa-1 heads trained on the run's model (frozen) and tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

# the stages a model may come from, in chain order (only those the spec reads are)
MODEL_STAGES = ("pretrain",)
TARGETS = ("distill", "tokens")


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


@dataclass
class MedusaConfig:
    """Medusa stage: ``num_heads`` heads (head k predicts the token k + 2 ahead), each ``num_layers`` ResBlocks
    and the model's own output layer (``share_output``) or one of its own, trained ``steps`` steps on windows
    of ``seq_len`` tokens (``batch_size`` per step) from the run's tokenize stage (or ``prefixes``, Megatron
    ``.bin/.idx`` prefixes; at most ``max_tokens`` tokens are read). ``target``: what a head learns (see
    :func:`lmhpc.medusa.heads.medusa_loss`): ``distill`` (the model's own distribution for the token it
    predicts, which is what decoding accepts) or ``tokens`` (the data). ``init_from``: the model (anything
    :func:`lmhpc.exchange.load_model` opens); empty: the run's latest model stage."""

    init_from: str = ""
    num_heads: int = 3
    num_layers: int = 1
    share_output: bool = True
    target: str = "distill"
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    loss_decay: float = 0.8
    prefixes: list[str] = field(default_factory=list)
    max_tokens: int = 2_000_000
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    threads: int = 0  # torch intra-op threads; 0: the stage's cpus_per_task

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("threads", "checkpoint_every", "log_every")

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        """The model stage it starts from (none with ``init_from``), and the tokenize stage unless ``prefixes``."""
        from lmhpc.exchange.source import model_reads

        chosen = model_reads(default, root, self.init_from, tuple(s for s in MODEL_STAGES if s in default))
        return tuple(s for s in chosen if s != "tokenize" or not self.prefixes)

    def validate(self, root: RunConfig) -> None:
        for key in ("num_heads", "steps", "batch_size", "max_tokens", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise _error(f"medusa.{key}", f"must be >= 1, got {getattr(self, key)}")
        for key in ("num_layers", "warmup", "threads", "seed"):
            if getattr(self, key) < 0:
                raise _error(f"medusa.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.seq_len < self.num_heads + 2:
            raise _error("medusa.seq_len", f"must be >= num_heads + 2 = {self.num_heads + 2} (head k looks k + 2 "
                                           f"tokens ahead), got {self.seq_len}")
        if not self.lr > 0:
            raise _error("medusa.lr", f"must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise _error("medusa.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not 0 < self.loss_decay <= 1:
            raise _error("medusa.loss_decay", f"must be in (0, 1], got {self.loss_decay}")
        if self.target not in TARGETS:
            raise _error("medusa.target", f"unknown target {self.target!r}; known: {', '.join(TARGETS)}")
        for i, p in enumerate(self.prefixes):
            path = root.path(p)
            if not (path.with_name(path.name + ".bin").is_file() and path.with_name(path.name + ".idx").is_file()):
                raise _error(f"medusa.prefixes[{i}]", f"{p}.bin/.idx does not exist")
        if "medusa" not in root.run.stages:
            return
        if not self.init_from and not any(s in root.run.stages for s in MODEL_STAGES):
            from lmhpc.context import DONE_MARKER

            done = [s for s in MODEL_STAGES if (root.run_dir / s / DONE_MARKER).exists()]
            if not done:
                raise _error("medusa.init_from", f"no model to train heads on: set medusa.init_from or chain one "
                                                 f"of {list(MODEL_STAGES)} before medusa in run.stages")
        if not self.prefixes and "tokenize" not in root.run.stages and not (root.run_dir / "tokenize").is_dir():
            raise _error("medusa.prefixes", "no training tokens: chain the tokenize stage or set medusa.prefixes")
