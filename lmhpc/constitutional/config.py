"""Configuration of the Constitutional AI stages: ``constitutional`` (critique → revision, SFT data) and
``ai_feedback`` (AI-labelled preference pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

# the model stages each stage may start from, in chain order (only registered stages may be read)
CONSTITUTIONAL_MODELS = ("pretrain",)
FEEDBACK_MODELS = ("pretrain", "sft")


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


@dataclass
class SamplingConfig:
    """How the model samples its answers (seeded: the same config and seed give the same text)."""

    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 0.95
    repetition_penalty: float = 1.0
    max_new_tokens: int = 64

    def check(self, prefix: str, positive_temperature: bool = False) -> None:
        if self.temperature < 0 or (positive_temperature and self.temperature == 0):
            raise _error(f"{prefix}.temperature", f"must be {'>' if positive_temperature else '>='} 0, got "
                         f"{self.temperature}" + (" (two answers of one prompt must be sampled, not greedy)"
                                                  if positive_temperature else ""))
        if self.top_k < 0:
            raise _error(f"{prefix}.top_k", f"must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise _error(f"{prefix}.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise _error(f"{prefix}.repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        if self.max_new_tokens < 1:
            raise _error(f"{prefix}.max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")


@dataclass
class _ModelStage:
    """What both stages share: the model, the constitution, the prompts and how the work is cut."""

    init_from: str = ""  # a model path (anything load_model opens); empty: the latest model stage of the run
    constitution: str = ""  # a constitution .json; empty: the shipped data/align/constitution/constitution.json
    principles: list[str] = field(default_factory=list)  # ids to sample from; empty: all of the constitution's
    prompts: list[str] = field(default_factory=list)  # .jsonl ({"prompt": ...}) or .txt (a prompt a line) files
    prompt_key: str = "prompt"
    max_prompts: int = 0  # 0: every prompt
    chunk_size: int = 16  # prompts per unit of work: generated as one batch, written with a completion marker
    add_bos: bool = True  # every model input starts with the tokenizer's BOS
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int = 0  # torch intra-op threads on CPU; 0: the stage's cpus_per_task

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("device", "threads")

    def _check(self, name: str) -> None:
        if self.max_prompts < 0:
            raise _error(f"{name}.max_prompts", f"must be >= 0, got {self.max_prompts}")
        if self.chunk_size < 1:
            raise _error(f"{name}.chunk_size", f"must be >= 1, got {self.chunk_size}")
        if self.threads < 0:
            raise _error(f"{name}.threads", f"must be >= 0, got {self.threads}")
        if not self.prompt_key:
            raise _error(f"{name}.prompt_key", "must name the field that holds a prompt")
        for i, path in enumerate(self.prompts):
            if not path:
                raise _error(f"{name}.prompts[{i}]", "must name a file")
        if len(set(self.principles)) != len(self.principles):
            raise _error(f"{name}.principles", f"lists a principle twice: {self.principles}")


@dataclass
class ConstitutionalConfig(_ModelStage):
    """Stage ``constitutional``: each red-team prompt (``prompts``, default the shipped set; a seeded sample of
    ``max_prompts``) is answered, then ``rounds`` times critiqued against a sampled principle and revised; the
    final revisions become ``sft.jsonl``. ``revisions.jsonl`` holds every step for inspection."""

    rounds: int = 2
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        from lmhpc.exchange.source import model_reads

        return model_reads(default, root, self.init_from, CONSTITUTIONAL_MODELS)

    def validate(self, root: RunConfig) -> None:
        self._check("constitutional")
        if self.rounds < 1:
            raise _error("constitutional.rounds", f"must be >= 1, got {self.rounds}")
        self.sampling.check("constitutional.sampling")


@dataclass
class AIFeedbackConfig(_ModelStage):
    """Stage ``ai_feedback``: for each prompt (the constitutional stage's, or ``prompts`` files) two answers are
    sampled from the model, and the model itself judges them: a multiple-choice question under a sampled principle,
    read from the probabilities of "(A)" and "(B)", asked in both orders and averaged. Writes ``pairs.jsonl``
    (prompt, chosen, rejected: preference data) and ``labels.jsonl`` (everything)."""

    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=1.0, top_p=0.95))
    judge_chat: bool = False  # ask the question as a user turn of the chat template (an aligned judge)
    tie_margin: float = 0.0  # |p - 0.5| <= tie_margin: a tie, quarantined
    score_batch_size: int = 16  # sequences per scoring forward pass

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        """The model stage it starts from (none with ``init_from``) and the constitutional stage's prompts (none
        when ``prompts`` names files)."""
        from lmhpc.exchange.source import model_reads

        reads = model_reads(default, root, self.init_from, FEEDBACK_MODELS)
        return tuple(s for s in reads if not (s == "constitutional" and self.prompts))

    def validate(self, root: RunConfig) -> None:
        self._check("ai_feedback")
        self.sampling.check("ai_feedback.sampling", positive_temperature=True)
        if not 0 <= self.tie_margin < 0.5:
            raise _error("ai_feedback.tie_margin", f"must be in [0, 0.5), got {self.tie_margin}")
        if self.score_batch_size < 1:
            raise _error("ai_feedback.score_batch_size", f"must be >= 1, got {self.score_batch_size}")
        if "ai_feedback" in root.run.stages and not self.prompts and "constitutional" not in root.run.stages:
            from lmhpc.context import DONE_MARKER

            if not (root.run_dir / "constitutional" / DONE_MARKER).exists():
                raise _error("ai_feedback.prompts", "empty, so the prompts are the constitutional stage's, but this "
                                                    "run neither chains that stage nor holds its output: name prompt "
                                                    "files, or add constitutional to run.stages")
