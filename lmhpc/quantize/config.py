"""Configuration of the quantize stage: which methods, which calibration data, how each result is scored."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from lmhpc.evaluate.config import PerplexityConfig, TaskFile

if TYPE_CHECKING:
    from lmhpc.config import RunConfig
    from lmhpc.model.args import ModelArgs

METHODS = ("rtn", "gptq", "nf4", "int8", "int8_dynamic")
AFFINE_BITS = (2, 3, 4, 8)
GGUF_EXPORTS = ("f32", "f16", "q8_0", "q4_0")
# the stages a quantized model may come from, in chain order (only those registered are read)
MODEL_STAGES = ("pretrain", "sft", "dpo", "ppo", "grpo")


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


@dataclass
class MethodSpec:
    """One quantized model: ``name`` (its folder), ``method`` (rtn, gptq, nf4, int8 = torchao weight-only,
    int8_dynamic = torchao dynamic activations + int8 weights), ``bits`` (rtn/gptq: 2, 3, 4 or 8, default 4;
    nf4: 4; int8: 8), ``group_size`` (inputs per scale; 0: one scale per output channel; unset: 128 for
    rtn/gptq, 64 for nf4's blocks, per channel for int8), ``sym`` and GPTQ's ``act_order``, ``static_groups``,
    ``true_sequential``, ``damp`` (fraction of the Hessian's mean diagonal) and ``block_size`` (lazy-update columns)."""

    name: str = ""
    method: str = "rtn"
    bits: int | None = None
    group_size: int | None = None
    sym: bool = False
    act_order: bool = False
    static_groups: bool = False
    true_sequential: bool = True
    damp: float = 0.01
    block_size: int = 128

    def nbits(self) -> int:
        """Bits per code (unset: 8 for the int8 methods, else 4)."""
        if self.bits is None:
            return 8 if self.method in ("int8", "int8_dynamic") else 4
        return self.bits

    def group(self) -> int | None:
        """Inputs per scale (None: per output channel); NF4: the block size."""
        if self.group_size is None:
            return {"rtn": 128, "gptq": 128, "nf4": 64}.get(self.method)
        return self.group_size or None

    def validate_at(self, key: str) -> None:
        if not self.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise _error(f"{key}.name", f"{self.name!r}: a plain folder name is needed (letters, digits, - _ .)")
        if self.method not in METHODS:
            raise _error(f"{key}.method", f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.method in ("rtn", "gptq") and self.nbits() not in AFFINE_BITS:
            raise _error(f"{key}.bits", f"{self.method} takes bits in {AFFINE_BITS}, got {self.bits}")
        if self.method == "nf4" and self.nbits() != 4:
            raise _error(f"{key}.bits", f"nf4 is a 4-bit type, got bits={self.bits}")
        if self.method in ("int8", "int8_dynamic") and self.nbits() != 8:
            raise _error(f"{key}.bits", f"{self.method} is 8-bit, got bits={self.bits}")
        if self.group_size is not None and self.group_size < 0:
            raise _error(f"{key}.group_size", f"must be >= 0 (0: per channel), got {self.group_size}")
        if self.method in ("int8", "int8_dynamic") and self.group():
            raise _error(f"{key}.group_size", f"{self.method} scales per output channel: leave it unset or 0")
        if self.method == "nf4":
            block = self.group()
            if block is None or block < 32 or block & (block - 1):
                raise _error(f"{key}.group_size", f"nf4 blocks are a power of two >= 32, got {self.group_size}")
        if self.method == "gptq":
            if not 0 <= self.damp < 1:
                raise _error(f"{key}.damp", f"must be in [0, 1), got {self.damp}")
            if self.block_size < 1:
                raise _error(f"{key}.block_size", f"must be >= 1, got {self.block_size}")
            if self.act_order and self.group() and not self.static_groups:
                raise _error(f"{key}.static_groups", "act_order with groups needs static_groups: true")

    def check_model(self, key: str, args: ModelArgs, where: str) -> None:
        """Fail (naming ``key``) when the model of ``where`` cannot take this method."""
        if set(args.layer_pattern) != {"A"} or args.moe.num_experts:
            raise _error(key, f"the model of {where} has other blocks than dense attention (layer_pattern "
                              f"{args.layer_pattern!r}, moe.num_experts {args.moe.num_experts}): only dense "
                              "Transformer blocks are quantized")
        group = self.group()
        if group is None or self.method == "nf4":
            return
        widths = {"dim": args.dim, "n_heads * head_dim": args.n_heads * args.head_dim, "ffn hidden": args.hidden_dim}
        for what, width in widths.items():
            if width % group:
                raise _error(f"{key}.group_size", f"{group} does not divide the model's {what} ({width}) "
                                                  f"of {where}")


@dataclass
class CalibrationConfig:
    """GPTQ's calibration data: ``sequences`` windows of ``seq_len`` tokens (0: the model's max_seq_len) drawn
    with a seeded generator (``seed``; unset: run.seed) from Megatron ``.bin/.idx`` shards: ``prefixes`` when
    given, else the run's tokenize stage."""

    sequences: int = 128
    seq_len: int = 512
    seed: int | None = None
    prefixes: list[str] = field(default_factory=list)
    batch_size: int = 8


@dataclass
class QuantEvalConfig:
    """How each model is scored, with the evaluate stage's library: perplexity on held-out sets and
    multiple-choice tasks (see :class:`lmhpc.evaluate.config.EvaluateConfig` for the same keys)."""

    tasks: list[str] = field(default_factory=lambda: ["arc_easy", "piqa"])
    task_files: list[TaskFile] = field(default_factory=list)
    limit: int = 100
    data_dir: str = ""
    perplexity: PerplexityConfig = field(default_factory=lambda: PerplexityConfig(lambada=100))
    too_long: Literal["skip", "error"] = "skip"
    batch_tokens: int = 2048
    device: Literal["auto", "cpu", "cuda"] = "cpu"


@dataclass
class QuantizeConfig:
    """Quantize stage: each of ``methods`` applied to one model (``init_from``, else the latest model stage the
    run chains), written as a packed folder ``<stage>/<name>/``; ``gguf`` exports of the same model; every
    result scored against the unquantized model in ``results.json`` / ``results.md``."""

    init_from: str = ""
    methods: list[MethodSpec] = field(default_factory=lambda: [
        MethodSpec(name="rtn-int8", method="rtn", bits=8, group_size=0), MethodSpec(name="nf4", method="nf4")])
    gguf: list[str] = field(default_factory=list)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    eval: QuantEvalConfig = field(default_factory=QuantEvalConfig)
    threads: int = 0  # torch intra-op threads; 0: the stage's cpus_per_task

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("threads", "eval.batch_tokens", "eval.device")

    def model_stages(self) -> tuple[str, ...]:
        from lmhpc.stages import registry

        return tuple(s for s in MODEL_STAGES if s in registry())

    def needs_calibration(self) -> bool:
        return any(m.method == "gptq" for m in self.methods)

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        """The model stage it starts from (none with ``init_from``: see :mod:`lmhpc.exchange.source`), the tokenizer
        with it, and the tokenize stage when GPTQ calibrates on the run's shards."""
        from lmhpc.context import DONE_MARKER
        from lmhpc.exchange.source import model_reads

        models = self.model_stages()
        chosen = model_reads(default, root, self.init_from, models)
        if not self.init_from and not any(s in chosen and s in root.run.stages for s in models):
            # a run that only quantizes: the newest model stage already complete in its folder
            done = [s for s in models if s in default and (root.run_dir / s / DONE_MARKER).exists()]
            chosen = tuple(s for s in default if s not in models or (done and s == done[-1]))
        keep_tokenize = self.needs_calibration() and not self.calibration.prefixes
        keep_tokenizer = not self.init_from
        return tuple(s for s in chosen if (s != "tokenize" or keep_tokenize) and (s != "tokenizer" or keep_tokenizer))

    def validate(self, root: RunConfig) -> None:
        from lmhpc.evaluate.tasks import TASKS

        names = []
        for i, method in enumerate(self.methods):
            method.validate_at(f"quantize.methods[{i}]")
            if method.name in names:
                raise _error(f"quantize.methods[{i}].name", f"{method.name!r} is used twice")
            names.append(method.name)
        for i, kind in enumerate(self.gguf):
            if kind not in GGUF_EXPORTS:
                raise _error(f"quantize.gguf[{i}]", f"unknown GGUF type {kind!r}; known: {', '.join(GGUF_EXPORTS)}")
            if f"gguf-{kind}" in names:
                raise _error(f"quantize.gguf[{i}]", f"gguf-{kind} is also a method name")
        if len(set(self.gguf)) != len(self.gguf):
            raise _error("quantize.gguf", "a type is listed twice")
        c = self.calibration
        for key, value in (("sequences", c.sequences), ("batch_size", c.batch_size)):
            if value < 1:
                raise _error(f"quantize.calibration.{key}", f"must be >= 1, got {value}")
        if c.seq_len < 0 or c.seq_len == 1:
            raise _error("quantize.calibration.seq_len", f"must be >= 2 (0: the model's max_seq_len), got {c.seq_len}")
        for i, name in enumerate(self.eval.tasks):
            if name not in TASKS:
                raise _error(f"quantize.eval.tasks[{i}]", f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        for i, tf in enumerate(self.eval.task_files):
            if not tf.name or not tf.path:
                raise _error(f"quantize.eval.task_files[{i}]", "needs a name and a path")
        for key, value in (("limit", self.eval.limit), ("perplexity.lambada", self.eval.perplexity.lambada),
                           ("threads", self.threads)):
            if value < 0:
                raise _error(f"quantize.{'' if key == 'threads' else 'eval.'}{key}", f"must be >= 0, got {value}")
        for key, value in (("perplexity.max_docs", self.eval.perplexity.max_docs),
                           ("perplexity.max_tokens", self.eval.perplexity.max_tokens),
                           ("batch_tokens", self.eval.batch_tokens)):
            if value < 1:
                raise _error(f"quantize.eval.{key}", f"must be >= 1, got {value}")
        if "quantize" in root.run.stages:
            if not self.methods and not self.gguf:
                raise _error("quantize.methods", "no method and no gguf export: nothing to do")
            self._check_source(root)

    def _check_source(self, root: RunConfig) -> None:
        """Against the model's shape where the config knows it (a pretrain stage of this run)."""
        if self.init_from:
            return  # checked by the preflight, which reads the model
        stages = self.stage_reads(tuple(self.model_stages()), root)
        if stages != ("pretrain",) or "pretrain" not in root.sections:
            return
        args = root.pretrain.model
        for i, method in enumerate(self.methods):
            method.check_model(f"quantize.methods[{i}]", args, "stage pretrain (pretrain.model)")
        seq_len = self.calibration.seq_len
        if self.needs_calibration() and seq_len > args.max_seq_len:
            raise _error("quantize.calibration.seq_len", f"{seq_len} exceeds the model's max_seq_len "
                                                         f"({args.max_seq_len})")
