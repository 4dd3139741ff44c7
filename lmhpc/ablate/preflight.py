"""The ablate stage's check before anything is submitted: the inputs it curates, the held-out texts and the task
files it scores the probes on are there."""

from __future__ import annotations

import glob
from typing import TYPE_CHECKING

from lmhpc.data.check import check_inputs

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def preflight(cfg: RunConfig) -> list[str]:
    """One line per problem, each starting with its config key; empty when everything is there."""
    problems = check_inputs(cfg.curate.inputs, cfg.path, "curate.inputs")
    ev = cfg.ablate.eval
    for i, text in enumerate(ev.perplexity.texts):
        pattern = str(cfg.path(text.path))
        if not any(glob.glob(pattern, recursive=True)):
            problems.append(f"ablate.eval.perplexity.texts[{i}].path: no file matches {pattern}")
    for i, task in enumerate(ev.task_files):
        if not cfg.path(task.path).is_file():
            problems.append(f"ablate.eval.task_files[{i}].path: no file {cfg.path(task.path)}")
    return problems
