"""Preference pairs: reading, checking, tokenizing and batching ``{"prompt", "chosen", "rejected"}`` records.

A record is one JSON line ``{"prompt": str | [{"role", "content"}, ...], "chosen": str, "rejected": str}`` plus
any metadata (kept aside, never used). The prompt is rendered with the tokenizer's chat template and its
generation prompt (a string prompt is one user message); each response is its own tokens followed by the end
token (``<|im_end|>`` under ChatML, else the tokenizer's end of sequence). Only response tokens carry a loss.

Bad records are counted by reason and quarantined (:class:`~lmhpc.data.quarantine.Quarantine`), never silently
dropped: ``bad_json``, ``missing_field``, ``bad_field``, ``empty_response``, ``identical_responses``, ``too_long``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmhpc.data.quarantine import Quarantine
from lmhpc.data.writers import open_compressed_reader
from lmhpc.exchange.tokenizer import TextTokenizer

REASONS = ("bad_json", "missing_field", "bad_field", "empty_response", "identical_responses", "too_long")


@dataclass(frozen=True)
class PreferencePair:
    """One checked, tokenized pair. ``index``: position among the kept pairs (the key of stored reference
    log-probs); ``origin``: ``file:line`` it came from."""

    index: int
    origin: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    margin: float | None = None  # the record's numeric "margin" (reward models may subtract it), if any

    @property
    def chosen_length(self) -> int:
        return len(self.prompt_ids) + len(self.chosen_ids)

    @property
    def rejected_length(self) -> int:
        return len(self.prompt_ids) + len(self.rejected_ids)


@dataclass
class PreferenceData:
    """The kept pairs, the quarantine counts by reason, and how many records were read."""

    pairs: list[PreferencePair]
    records_in: int
    quarantined: dict[str, int]

    def fingerprint(self) -> str:
        """sha256 of every pair's token ids, in order: equal iff the tokenized data is equal."""
        h = hashlib.sha256()
        for p in self.pairs:
            for part in (p.prompt_ids, p.chosen_ids, p.rejected_ids):
                h.update(len(part).to_bytes(4, "little"))
                h.update(b"".join(int(i).to_bytes(4, "little") for i in part))
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        return {"records_in": self.records_in, "pairs": len(self.pairs), "quarantined": dict(self.quarantined)}


def end_token(tokenizer: TextTokenizer) -> int:
    """The token that ends an assistant turn: ``<|im_end|>`` when the vocabulary has it, else end of sequence."""
    im_end = tokenizer.token_id("<|im_end|>")
    if im_end is not None:
        return im_end
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an end-of-sequence token to end responses with")
    return tokenizer.eos_id


def prompt_messages(prompt: Any) -> list[dict[str, str]] | None:
    """The prompt as chat messages (a string is one user message); None if it is neither form."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    return None


def check_record(record: Any) -> tuple[str, str] | None:
    """(reason, detail) when a record cannot be a preference pair, else None."""
    if not isinstance(record, dict):
        return "bad_json", f"a record must be a JSON object, got {type(record).__name__}"
    for key in ("prompt", "chosen", "rejected"):
        if key not in record or record[key] is None:
            return "missing_field", f"no '{key}'"
    messages = prompt_messages(record["prompt"])
    if messages is None or not any(m["content"].strip() for m in messages):
        return "bad_field", "'prompt' must be a non-empty string or a list of {role, content} messages"
    for key in ("chosen", "rejected"):
        if not isinstance(record[key], str):
            return "bad_field", f"'{key}' must be a string, got {type(record[key]).__name__}"
        if not record[key].strip():
            return "empty_response", f"'{key}' is empty"
    if record["chosen"].strip() == record["rejected"].strip():
        return "identical_responses", "chosen == rejected"
    return None


def read_records(paths: Sequence[Path]) -> Iterable[tuple[str, bytes, Any]]:
    """``(origin, raw line, parsed record or a JSONDecodeError)`` for every non-blank line of the files, in order
    (jsonl, optionally .gz / .zst)."""
    for path in paths:
        with open_compressed_reader(path) as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                origin = f"{path}:{number}"
                try:
                    yield origin, raw, json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    yield origin, raw, exc


def tokenize_record(record: dict[str, Any], tokenizer: TextTokenizer, end_id: int
                    ) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids with the chat template's generation prompt, chosen ids + end, rejected ids + end)."""
    messages = prompt_messages(record["prompt"])
    assert messages is not None
    # a chat template writes the BOS text itself where the model wants one: no second BOS is added
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    chosen = tokenizer.encode(record["chosen"]) + [end_id]
    rejected = tokenizer.encode(record["rejected"]) + [end_id]
    return prompt, chosen, rejected


def load_pairs(paths: Sequence[Path], tokenizer: TextTokenizer, max_len: int, quarantine: Quarantine
               ) -> PreferenceData:
    """Every good pair of ``paths`` tokenized, bad ones quarantined by reason. ``max_len``: the longest
    prompt+response a pair may have (tokens); longer pairs are quarantined as ``too_long``."""
    end_id = end_token(tokenizer)
    pairs: list[PreferencePair] = []
    records_in = 0
    for origin, raw, record in read_records(paths):
        records_in += 1
        if isinstance(record, Exception):
            quarantine.add("bad_json", origin, raw, str(record))
            continue
        problem = check_record(record)
        if problem is not None:
            quarantine.add(problem[0], origin, raw, problem[1])
            continue
        prompt, chosen, rejected = tokenize_record(record, tokenizer, end_id)
        longest = len(prompt) + max(len(chosen), len(rejected))
        if longest > max_len:
            quarantine.add("too_long", origin, raw, f"{longest} tokens > max_len {max_len}")
            continue
        margin = record.get("margin")
        margin = float(margin) if isinstance(margin, (int, float)) and not isinstance(margin, bool) else None
        pairs.append(PreferencePair(len(pairs), origin, tuple(prompt), tuple(chosen), tuple(rejected), margin))
    return PreferenceData(pairs, records_in, dict(quarantine.counts))


@dataclass
class PairBatch:
    """A batch of pairs laid out ``[all chosen; all rejected]`` along the batch dimension (as TRL does).

    ``input_ids`` (2B, T) right-padded with ``pad_id``; ``response_mask`` (2B, T) marks response tokens (the
    targets that carry a loss); ``lengths`` (2B,) the real length of each row; ``index`` (B,) the pairs' indices.
    """

    input_ids: torch.Tensor
    response_mask: torch.Tensor
    lengths: torch.Tensor
    index: torch.Tensor

    @property
    def pairs(self) -> int:
        return int(self.index.numel())

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(self.input_ids.to(device), self.response_mask.to(device), self.lengths.to(device),
                         self.index)


def collate_pairs(pairs: Sequence[PreferencePair], pad_id: int, pad_to: int | None = None) -> PairBatch:
    """Pairs into one right-padded batch (width: the longest row, or ``pad_to``)."""
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"a row of {width} tokens does not fit pad_to={pad_to}")
        width = pad_to
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    lengths = torch.zeros(len(rows), dtype=torch.long)
    for r, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        ids[r, :n] = torch.tensor(prompt + response, dtype=torch.long)
        mask[r, len(prompt):n] = True
        lengths[r] = n
    return PairBatch(ids, mask, lengths, torch.tensor([p.index for p in pairs], dtype=torch.long))


def pad_id_of(tokenizer: TextTokenizer) -> int:
    """The id padding is written with (never read: padding sits after every real token of a causal model)."""
    for candidate in (tokenizer.pad_id, tokenizer.eos_id, 0):
        if candidate is not None:
            return candidate
    return 0
