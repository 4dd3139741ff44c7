"""Configuration of the ablate stage: which variants of the curated data, the probe model, its evaluation.

Every variant is curated from the run's own ``curate.inputs`` with the run's ``curate:`` settings changed in one
way (a filter turned off, dedup skipped, one source only, other mixing weights), tokenized with the run's
tokenizer, used to train the same probe model (``probe:``, shaped like pretrain's ``model``/``train``/
``optimizer``) for the same number of steps with the same seed, then scored with the evaluate library
(``eval:``, shaped like the evaluate stage's section). The baseline keeps every filter and dedup.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from lmhpc.curate.filters.config import FILTER_ORDER
from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.model.args import ModelArgs
from lmhpc.train.config import CheckpointConfig, OptimizerConfig, PretrainConfig, SpikeGuardConfig, TrainConfig

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


def _probe_model() -> ModelArgs:
    return ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)


def _probe_train() -> TrainConfig:
    return TrainConfig(steps=60, seq_len=128, micro_batch_size=8, vocab_multiple_of=64)


def _probe_optimizer() -> OptimizerConfig:
    return OptimizerConfig(lr=2e-3, warmup_steps=5)


def _probe_checkpoint() -> CheckpointConfig:
    return CheckpointConfig(interval=0, keep_last=1)


def _probe_eval() -> EvaluateConfig:
    return EvaluateConfig(tasks=["hellaswag", "arc_easy", "piqa"], limit=300)


@dataclass
class ProbeConfig:
    """The probe model every variant trains, from the same seed for the same number of steps (one process).

    ``train.steps × train.micro_batch_size × train.grad_accum × train.seq_len`` tokens: the token budget.
    """

    model: ModelArgs = field(default_factory=_probe_model)
    train: TrainConfig = field(default_factory=_probe_train)
    optimizer: OptimizerConfig = field(default_factory=_probe_optimizer)
    spike: SpikeGuardConfig = field(default_factory=lambda: SpikeGuardConfig(policy="off"))
    checkpoint: CheckpointConfig = field(default_factory=_probe_checkpoint)

    def pretrain_config(self, tokenizer: str = "") -> PretrainConfig:
        """The pretrain section that trains this probe in one process (data: the variant's ``blend.json``)."""
        cfg = PretrainConfig(model=dataclasses.replace(self.model), train=dataclasses.replace(self.train),
                             optimizer=dataclasses.replace(self.optimizer), spike=dataclasses.replace(self.spike),
                             checkpoint=dataclasses.replace(self.checkpoint, save_final=True))
        cfg.data.tokenizer = tokenizer
        return cfg

    def token_budget(self) -> int:
        t = self.train
        return t.steps * t.micro_batch_size * t.grad_accum * t.seq_len


def input_source(spec: Any) -> str:
    """The source name of a curate input: its ``source``, else the name of its files' folder (curate's default)."""
    return spec.source or Path(spec.path).parent.name


def filter_enabled_anywhere(filters: Any, name: str) -> bool:
    """Whether filter ``name`` runs on some documents: globally, or through a per-source/per-domain override."""
    if getattr(filters, name).enabled:
        return True
    for group in (filters.per_source, filters.per_domain):
        for override in group.values():
            section = override.get(name) if isinstance(override, dict) else None
            if isinstance(section, dict) and section.get("enabled") is True:
                return True
    return False


@dataclass
class AblateConfig:
    """Ablate stage: probe models trained on variants of the curated data, compared with the baseline.

    - ``without``: one variant per filter named (a filter of ``curate.filters``), with that filter off everywhere;
    - ``without_dedup``: a variant that skips dedup;
    - ``sources``: one variant per source of ``curate.inputs``, holding that source alone;
    - ``mixes``: ``{name: {source: weight}}``, variants whose blend gives each source that share of the tokens;
    - ``tokenizer``: a sentencepiece model file instead of the run's tokenizer stage;
    - ``keep_data``: keep each variant's curated, deduplicated and tokenized data (default: removed once the
      variant's probe is scored; stats, probe checkpoints and scores stay).
    """

    without: list[str] = field(default_factory=list)
    without_dedup: bool = False
    sources: bool = False
    mixes: dict[str, dict[str, float]] = field(default_factory=dict)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    eval: EvaluateConfig = field(default_factory=_probe_eval)
    tokenizer: str = ""
    keep_data: bool = False

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("keep_data", "eval.batch_tokens", "eval.device", "eval.threads")

    def stage_reads(self, default: tuple[str, ...]) -> tuple[str, ...]:
        """The run's tokenizer stage, or nothing when ``ablate.tokenizer`` names a model file."""
        return () if self.tokenizer else default

    def validate(self, root: RunConfig) -> None:
        active = "ablate" in root.run.stages
        filters = root.curate.filters
        for i, name in enumerate(self.without):
            key = f"ablate.without[{i}]"
            if name not in FILTER_ORDER:
                raise _error(key, f"unknown filter {name!r}; filters: {', '.join(FILTER_ORDER)}")
            if self.without.index(name) != i:
                raise _error(key, f"filter {name!r} is listed twice")
            if not filter_enabled_anywhere(filters, name):
                raise _error(key, f"filter {name!r} is off in curate.filters (and in every per_source/per_domain "
                                  "override): a variant without it would be the baseline")
        sources = sorted({input_source(s) for s in root.curate.inputs})
        if self.sources and len(sources) < 2:
            raise _error("ablate.sources", f"curate.inputs has {len(sources)} source(s) {sources}: a one-source "
                                           "subset would be the baseline")
        if self.sources:
            for source in sources:
                if not source or source.startswith(".") or not all(c.isalnum() or c in "-_." for c in source):
                    raise _error("ablate.sources", f"source {source!r} names a variant folder: use letters, digits, "
                                                   "- _ . in curate.inputs[].source")
        for name, weights in self.mixes.items():
            if not name or not all(c.isalnum() or c in "-_" for c in name):
                raise _error(f"ablate.mixes.{name}", "a mix name is letters, digits, - and _")
            if not isinstance(weights, dict) or not weights:
                raise _error(f"ablate.mixes.{name}", "must map sources to weights")
            for source, weight in weights.items():
                if source not in sources:
                    raise _error(f"ablate.mixes.{name}.{source}",
                                 f"unknown source {source!r}; sources of curate.inputs: {sources}")
                if not isinstance(weight, int | float) or isinstance(weight, bool) or weight < 0:
                    raise _error(f"ablate.mixes.{name}.{source}", f"must be a number >= 0, got {weight!r}")
            if sum(weights.values()) <= 0:
                raise _error(f"ablate.mixes.{name}", "the weights sum to 0")
        self._validate_probe(root)
        self._validate_eval(root)
        if self.tokenizer and active and not root.path(self.tokenizer).is_file():
            raise _error("ablate.tokenizer", f"no tokenizer model {root.path(self.tokenizer)}")
        if active:
            if not root.curate.inputs:
                raise _error("curate.inputs", "the ablate stage curates the run's inputs: give at least one")
            if not (self.without or self.without_dedup or self.sources or self.mixes):
                raise _error("ablate.without", "no variant to compare with the baseline: set ablate.without, "
                                               "ablate.without_dedup, ablate.sources or ablate.mixes")

    def _validate_probe(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError, Resources

        # the probe trains in one process, whatever resources.pretrain asks of the pretrain stage
        alone = dataclasses.replace(root, resources={"pretrain": Resources(tasks=1)})
        try:
            self.probe.pretrain_config().validate(alone)
        except ConfigError as e:
            raise _error(e.key.replace("pretrain.", "ablate.probe.", 1), str(e).split(": ", 1)[1]) from None

    def _validate_eval(self, root: RunConfig) -> None:
        from lmhpc.config import ConfigError

        try:
            self.eval.validate(root)
        except ConfigError as e:
            raise _error(e.key.replace("evaluate.", "ablate.eval.", 1), str(e).split(": ", 1)[1]) from None
        if self.eval.models:
            raise _error("ablate.eval.models", "the probes are the models scored; leave it empty")
        if self.eval.all_checkpoints:
            raise _error("ablate.eval.all_checkpoints", "each probe is scored at its last step")
        if not (self.eval.tasks or self.eval.task_files or self.eval.perplexity.texts or self.eval.perplexity.prefixes
                or self.eval.perplexity.lambada):
            raise _error("ablate.eval", "nothing to score the probes on: give tasks or held-out perplexity texts")
        if self.eval.harness.tasks:
            raise _error("ablate.eval.harness.tasks", "harness tasks are not run for probes; use ablate.eval.tasks")
