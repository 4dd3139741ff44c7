"""Where a stage's starting model comes from: a path named in its config, or the latest model stage of the run.

The stages that start from a model (sft, dpo, reward, ppo, grpo, the constitutional stages, quantize) declare
the model stages they may read (``reads``, e.g. ``("pretrain", "sft")``) and an ``init_from`` key. With
``init_from`` empty they read the latest of those stages that the run chains; with ``init_from`` set (anything
:func:`lmhpc.exchange.load_model` opens: a stage folder, a checkpoint step, a consolidated or Hugging Face folder,
a ``.gguf`` file) they read none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lmhpc.stages import last_in_run

if TYPE_CHECKING:
    from lmhpc.config import RunConfig
    from lmhpc.context import StageContext


def model_reads(default: tuple[str, ...], root: RunConfig, init_from: str, model_stages: tuple[str, ...]
                ) -> tuple[str, ...]:
    """``default`` without the model stages it does not start from: all of them when ``init_from`` is set,
    else all but the latest one the run chains. Other reads (data stages) stay."""
    keep = None if init_from else last_in_run(tuple(s for s in model_stages if s in default), root)
    return tuple(s for s in default if s not in model_stages or s == keep)


def model_source(ctx: StageContext, init_from: str, model_stages: tuple[str, ...]) -> Path:
    """The path of the model this stage starts from (see :func:`model_reads`)."""
    if init_from:
        return ctx.cfg.path(init_from)
    for name in reversed(list(ctx.inputs)):
        if name in model_stages:
            return ctx.stage_output(name)
    raise ValueError(f"stage '{ctx.stage}' starts from a model: set {ctx.stage}.init_from, or chain one of "
                     f"{list(model_stages)} before it in run.stages")
