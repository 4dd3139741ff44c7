"""The constitution (principles with their critique, revision and preference requests) and the prompt files.

A constitution is a JSON file ``{"name", "license", "principles": [{"id", "critique_request",
"revision_request", "preference"}, ...]}``. Prompt files are ``.jsonl`` (one ``{"prompt": ...}`` object a line;
the key is configurable; ``.gz``/``.zst`` too) or ``.txt`` (one prompt a line). Every problem with them is a
:class:`~lmhpc.config.ConfigError` naming the config key, raised before any model is loaded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmhpc
from lmhpc.config import ConfigError
from lmhpc.data.quarantine import Quarantine

SHIPPED = Path(lmhpc.__file__).resolve().parent.parent / "data" / "align" / "constitution"
SHIPPED_CONSTITUTION = SHIPPED / "constitution.json"
SHIPPED_PROMPTS = SHIPPED / "red_team_prompts.jsonl"
PRINCIPLE_FIELDS = ("id", "critique_request", "revision_request", "preference")


@dataclass(frozen=True)
class Principle:
    """One principle: what the model is asked to critique, to revise, and which answer it should prefer."""

    id: str
    critique_request: str
    revision_request: str
    preference: str


@dataclass(frozen=True)
class Constitution:
    name: str
    principles: tuple[Principle, ...]
    source: Path

    def by_id(self) -> dict[str, Principle]:
        return {p.id: p for p in self.principles}

    def select(self, ids: list[str], key: str) -> tuple[Principle, ...]:
        """The principles named by ``ids`` (config key ``key``), in that order; all of them when empty."""
        if not ids:
            return self.principles
        known = self.by_id()
        for i, pid in enumerate(ids):
            if pid not in known:
                raise ConfigError(f"{key}[{i}]", f"unknown principle {pid!r}; {self.source} has: {', '.join(known)}")
        return tuple(known[pid] for pid in ids)


def constitution_path(value: str, resolve: Callable[[str], Path]) -> Path:
    return resolve(value) if value else SHIPPED_CONSTITUTION


def load_constitution(path: Path, key: str) -> Constitution:
    """The constitution at ``path``; a missing file, bad JSON or a malformed principle raises ConfigError(key)."""
    if not path.is_file():
        raise ConfigError(key, f"constitution file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(key, f"{path} is not a readable JSON constitution: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("principles"), list) or not data["principles"]:
        raise ConfigError(key, f"{path} must be an object with a non-empty list 'principles'")
    principles = []
    for i, item in enumerate(data["principles"]):
        if not isinstance(item, dict):
            raise ConfigError(key, f"{path}: principles[{i}] must be an object with {', '.join(PRINCIPLE_FIELDS)}")
        for name in PRINCIPLE_FIELDS:
            value = item.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(key, f"{path}: principles[{i}].{name} must be a non-empty string, got {value!r}")
        extra = sorted(set(item) - set(PRINCIPLE_FIELDS))
        if extra:
            raise ConfigError(key, f"{path}: principles[{i}] has unknown fields {extra}; known: {PRINCIPLE_FIELDS}")
        principles.append(Principle(*(item[name].strip() for name in PRINCIPLE_FIELDS)))
    ids = [p.id for p in principles]
    duplicates = sorted({pid for pid in ids if ids.count(pid) > 1})
    if duplicates:
        raise ConfigError(key, f"{path}: principle ids must be distinct, repeated: {duplicates}")
    return Constitution(str(data.get("name", path.stem)), tuple(principles), path)


def prompt_paths(values: list[str], resolve: Callable[[str], Path]) -> list[Path]:
    return [resolve(v) for v in values] if values else [SHIPPED_PROMPTS]


def check_prompt_files(paths: list[Path], key: str) -> None:
    for i, path in enumerate(paths):
        if not path.is_file():
            raise ConfigError(f"{key}[{i}]", f"prompt file {path} does not exist")


def read_prompts(paths: list[Path], prompt_key: str, key: str, quarantine: Quarantine | None) -> list[str]:
    """Every usable prompt of the files, in file order. Bad lines (malformed JSON, no prompt field, an empty or a
    repeated prompt) are quarantined by reason; raises ConfigError(key) when no prompt is left."""
    from lmhpc.data.writers import open_compressed_reader

    check_prompt_files(paths, key)
    prompts: list[str] = []
    seen: set[str] = set()
    for path in paths:
        with open_compressed_reader(path) as raw:
            lines = raw.read().decode("utf-8", errors="replace").splitlines()
        plain = path.suffix == ".txt"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue  # blank lines separate nothing and hold no record
            reason, prompt = _prompt_of(line, plain, prompt_key)
            if reason is None and prompt in seen:
                reason = "duplicate_prompt"
            if reason is not None:
                if quarantine is not None:
                    quarantine.add(reason, f"{path}:{number}", line)
                continue
            seen.add(prompt)
            prompts.append(prompt)
    if not prompts:
        raise ConfigError(key, f"no usable prompt in {', '.join(map(str, paths))} (each line: a JSON object with a "
                               f"non-empty string {prompt_key!r}, or a line of text in a .txt file)")
    return prompts


def _prompt_of(line: str, plain: bool, prompt_key: str) -> tuple[str | None, str]:
    if plain:
        return None, line.strip()
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return "malformed_line", ""
    if not isinstance(record, dict) or prompt_key not in record:
        return "missing_prompt", ""
    value = record[prompt_key]
    if not isinstance(value, str):
        return "missing_prompt", ""
    if not value.strip():
        return "empty_prompt", ""
    return None, value.strip()


def select_prompts(prompts: list[str], seed: int, max_prompts: int, salt: str) -> list[str]:
    """A seeded shuffle of ``prompts``, the first ``max_prompts`` of it (all when 0)."""
    order = list(prompts)
    random.Random(f"{seed}:{salt}:prompts").shuffle(order)
    return order[:max_prompts] if max_prompts else order
