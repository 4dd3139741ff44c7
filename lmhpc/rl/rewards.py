"""Verifiable reward functions, and how a config names them.

A reward function is a plain callable ``f(prompts, completions, **record_fields) -> list[float]``: the prompts
and completions as text, and every other field of the task records as lists (``answer``, ``task``, ...), one
value per completion. Extra keyword arguments are accepted and ignored, so the same functions plug into TRL's
``GRPOTrainer`` (which also passes ``completion_ids`` and ``trainer_state``). A config names them
``"module:function"`` (e.g. ``lmhpc.rl.rewards:exact_answer``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from lmhpc.rl.tasks import ANSWER_FORMATS

RewardFunction = Callable[..., list[float]]


def _text(completion: Any) -> str:
    """A completion's text (a conversational completion is a list of messages: the last one's content)."""
    if isinstance(completion, list):
        return str(completion[-1].get("content", "")) if completion else ""
    return str(completion)


def exact_answer(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **_: Any) -> list[float]:
    """1 when the completion, stripped of surrounding white space, is the answer; else 0."""
    return [1.0 if _text(c).strip() == a.strip() else 0.0 for c, a in zip(completions, answer)]


def format_reward(prompts: Sequence[Any], completions: Sequence[Any], task: Sequence[str] | None = None,
                  **_: Any) -> list[float]:
    """1 when the completion has the shape of an answer to its task (a number, a list of numbers, a number with
    thousands separators), whether or not it is right; else 0. Tasks of unknown kind: any one-line text."""
    kinds = task if task is not None else ["arithmetic"] * len(completions)
    out = []
    for c, kind in zip(completions, kinds):
        text = _text(c).strip()
        pattern = ANSWER_FORMATS.get(kind)
        ok = bool(pattern.fullmatch(text)) if pattern is not None else bool(text) and "\n" not in text
        out.append(1.0 if ok else 0.0)
    return out


def length_reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **_: Any
                  ) -> list[float]:
    """How close the completion's length is to the answer's: ``max(0, 1 − |len(c) − len(a)| / len(a))``."""
    out = []
    for c, a in zip(completions, answer):
        target = max(len(a.strip()), 1)
        out.append(max(0.0, 1.0 - abs(len(_text(c).strip()) - target) / target))
    return out


def load_reward_function(name: str) -> RewardFunction:
    """The callable named ``"module:function"``; raises ``ValueError`` saying what is wrong."""
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{name!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r}: {e}") from e
    func = getattr(module, attr, None)
    if not callable(func):
        raise ValueError(f"module {module_name!r} has no function {attr!r}")
    return func


def function_name(name: str) -> str:
    """The name under which a reward function's metrics are logged (``rewards/<name>/mean``)."""
    return name.rpartition(":")[2]


def score(functions: Sequence[tuple[str, RewardFunction]], prompts: Sequence[Any], completions: Sequence[Any],
          fields: dict[str, list[Any]]) -> list[list[float]]:
    """Each function's rewards (one list per function, one value per completion); a function that returns
    the wrong number of values or a value that is no number fails naming it."""
    out = []
    for name, func in functions:
        values = list(func(prompts=list(prompts), completions=list(completions), **fields))
        if len(values) != len(completions):
            raise ValueError(f"reward function {name} returned {len(values)} values for {len(completions)} "
                             "completions")
        try:
            out.append([float("nan") if v is None else float(v) for v in values])
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward function {name} returned a value that is not a number: {e}") from e
    return out
