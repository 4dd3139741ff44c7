"""Configuration of the preference stages: ``reference`` (the frozen reference model's log-probs), ``dpo`` and
``reward``.

Preference data: jsonl files ``{"prompt", "chosen", "rejected"}`` named in ``<stage>.data`` and, when the run
chains the ``ai_feedback`` stage, its ``pairs.jsonl``. The reference stage has no data or model of its own: it
scores the dpo stage's data with the dpo stage's starting model, so that dpo never holds two models.
"""

from __future__ import annotations

import glob
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from lmhpc.align.config import AlignTrainConfig, LoRAConfig
from lmhpc.preference.losses import DPO_LOSSES

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

MODEL_STAGES = ("pretrain", "sft")  # the model stages dpo and reward may start from (the latest the run chains)
AI_FEEDBACK = "ai_feedback"  # its pairs.jsonl joins the preference data when the run chains it
AI_FEEDBACK_PAIRS = "pairs.jsonl"
REFERENCE = "reference"
# the ai_feedback stage is read where its package is part of this tree (the registry refuses unknown reads)
HAS_AI_FEEDBACK = importlib.util.find_spec("lmhpc.constitutional.spec") is not None
DATA_READS = (AI_FEEDBACK,) if HAS_AI_FEEDBACK else ()

FINGERPRINT_IGNORE = ("train.checkpoint_interval", "train.keep_last", "train.log_every", "train.dp_shard",
                      "train.device")


def _fail(key: str, message: str) -> None:
    from lmhpc.config import ConfigError

    raise ConfigError(key, message)


def data_files(entries: list[str], root: RunConfig, key: str) -> list[Path]:
    """The files ``entries`` name, in order (a glob's matches sorted); ConfigError naming ``key[i]`` for an entry
    that matches nothing."""
    files: list[Path] = []
    for i, entry in enumerate(entries):
        path = root.path(entry)
        matches = sorted(Path(p) for p in glob.glob(str(path))) if glob.has_magic(str(path)) else \
            ([path] if path.exists() else [])
        matches = [m for m in matches if m.is_file()]
        if not matches:
            _fail(f"{key}[{i}]", f"{entry!r} matches no file ({path})")
        files += [m for m in matches if m not in files]
    return files


def _preference_reads(default: tuple[str, ...], root: RunConfig, init_from: str) -> tuple[str, ...]:
    from lmhpc.exchange.source import model_reads

    reads = model_reads(default, root, init_from, MODEL_STAGES)
    return tuple(s for s in reads if s != AI_FEEDBACK or s in root.run.stages)


def _validate_source(stage: str, init_from: str, data: list[str], root: RunConfig) -> None:
    data_files(data, root, f"{stage}.data")
    if stage not in root.run.stages:
        return
    if not data and not (HAS_AI_FEEDBACK and AI_FEEDBACK in root.run.stages):
        _fail(f"{stage}.data", "no preference data: name jsonl files of {prompt, chosen, rejected} (e.g. "
              "data/align/preference/pairs.jsonl) or chain the ai_feedback stage before it in run.stages")
    if init_from:
        if not root.path(init_from).exists():
            _fail(f"{stage}.init_from", f"{root.path(init_from)} does not exist")
    elif not any(s in root.run.stages for s in MODEL_STAGES):
        _fail(f"{stage}.init_from", f"{stage} starts from a model: set {stage}.init_from or chain one of "
              f"{list(MODEL_STAGES)} before it in run.stages")


@dataclass
class DpoConfig:
    """Direct preference optimisation against the reference stage's stored log-probs.

    - ``loss_type``: ``sigmoid`` (DPO), ``ipo`` (per-token averaged log-ratios), ``hinge`` (SLiC), ``robust``
      (with ``label_smoothing`` ε, the fraction of labels assumed flipped); ``beta``: the KL strength β (IPO's τ).
    - ``length_normalize``: every loss on per-token averaged log-ratios instead of summed ones.
    - ``packing``: each pair as one ``prompt, chosen, rejected`` sequence (the prompt computed once, no padding;
      the rejected response never attends to the chosen one); false: padded ``[chosen; rejected]`` rows.
    - ``init_from``: the starting model, also the reference (empty: the latest of the run's model stages).
    - ``train.global_batch_size`` counts pairs; ``train.max_len`` is the longest prompt+response kept.
    """

    data: list[str] = field(default_factory=list)
    init_from: str = ""
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    length_normalize: bool = False
    packing: bool = True
    train: AlignTrainConfig = field(default_factory=lambda: AlignTrainConfig(lr=1e-6))
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    fingerprint_ignore: ClassVar[tuple[str, ...]] = FINGERPRINT_IGNORE

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        return _preference_reads(default, root, self.init_from)

    def validate(self, root: RunConfig) -> None:
        self.train.validate_at("dpo.train", root, "dpo")
        self.lora.validate_at("dpo.lora")
        if self.loss_type not in DPO_LOSSES:
            _fail("dpo.loss_type", f"unknown loss {self.loss_type!r}; one of {list(DPO_LOSSES)}")
        if self.beta <= 0:
            _fail("dpo.beta", f"must be > 0, got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            _fail("dpo.label_smoothing", f"must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and self.loss_type != "robust":
            _fail("dpo.label_smoothing", f"applies to loss_type robust only (loss_type is {self.loss_type})")
        _validate_source("dpo", self.init_from, self.data, root)
        if "dpo" in root.run.stages and REFERENCE not in root.run.stages \
                and not (root.run_dir / REFERENCE / "DONE").exists():
            _fail("run.stages", "dpo reads the reference stage's log-probs: chain reference before dpo")


@dataclass
class ReferenceConfig:
    """The frozen reference model's summed log-probs (and token counts) of every chosen and rejected response of
    the dpo stage's data, computed once by the dpo stage's starting model: ``batch_size`` pairs per forward pass,
    the pairs split over the ranks."""

    batch_size: int = 8
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("batch_size", "device")

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        return _preference_reads(default, root, root.section("dpo").init_from)

    def validate(self, root: RunConfig) -> None:
        if self.batch_size < 1:
            _fail("reference.batch_size", f"must be >= 1, got {self.batch_size}")
        if REFERENCE in root.run.stages and "dpo" not in root.run.stages:
            # alone, it still scores the dpo section's data and model: they must be usable
            dpo = root.section("dpo")
            if not dpo.data and not (HAS_AI_FEEDBACK and AI_FEEDBACK in root.run.stages):
                _fail("dpo.data", "the reference stage scores the dpo stage's data: name its files")


@dataclass
class RewardConfig:
    """A Bradley-Terry reward model: the starting model's architecture with a scalar head on the last token,
    trained with ``-log σ(r_chosen - r_rejected [- margin])`` (+ ``center_rewards_coefficient × (r_c + r_r)²``).

    - ``use_margin``: subtract each record's numeric ``margin`` field (records without one use 0).
    - ``train.global_batch_size`` counts pairs. The model is saved in ``reward/reward_model/``
      (:func:`lmhpc.preference.reward_model.load_reward_model`).
    """

    data: list[str] = field(default_factory=list)
    init_from: str = ""
    use_margin: bool = False
    center_rewards_coefficient: float = 0.0
    train: AlignTrainConfig = field(default_factory=lambda: AlignTrainConfig(lr=1e-4))
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    fingerprint_ignore: ClassVar[tuple[str, ...]] = FINGERPRINT_IGNORE

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        return _preference_reads(default, root, self.init_from)

    def validate(self, root: RunConfig) -> None:
        self.train.validate_at("reward.train", root, "reward")
        self.lora.validate_at("reward.lora")
        if self.center_rewards_coefficient < 0:
            _fail("reward.center_rewards_coefficient", f"must be >= 0, got {self.center_rewards_coefficient}")
        _validate_source("reward", self.init_from, self.data, root)
