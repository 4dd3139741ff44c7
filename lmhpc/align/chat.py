"""Chat data for supervised fine-tuning: read and check ``{"messages": [...]}`` records, render them with the
tokenizer's chat template, and mark the assistant tokens (the only ones with a loss).

Tokens come from the template's text cut into segments: for each assistant turn ``i``, the text up to
``render(messages[:i], add_generation_prompt=True)`` (everything before the answer, the generation prompt
included) and the text up to ``render(messages[:i+1])`` (the answer and its end-of-turn marker). Segments are
encoded one by one (as TRL encodes prompt and completion apart); the answer segments are the loss tokens. The
prompt part is thus encoded exactly as a generator encodes a prompt, no token straddles a prompt and its answer,
and the mask is exact by construction. (A sentencepiece model with a dummy prefix starts each segment at a word
boundary, as it starts a generator's prompt.)

Bad records are counted by reason and quarantined (``invalid_json``, ``missing_field``, ``unknown_role``,
``empty_content``, ``no_assistant_turn``, ``too_long``), never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmhpc.data.quarantine import Quarantine
from lmhpc.exchange.tokenizer import TextTokenizer

ROLES = ("system", "user", "assistant")
REASONS = ("invalid_json", "missing_field", "unknown_role", "empty_content", "no_assistant_turn", "too_long")


class BadRecord(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ChatExample:
    """One conversation: its token ids and, per token, whether it is an assistant (loss) token."""

    tokens: list[int]
    assistant: list[bool]
    location: str


@dataclass
class ChatData:
    examples: list[ChatExample]
    records_in: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def check_messages(record: object) -> list[dict[str, str]]:
    """The record's messages, or :class:`BadRecord` with its reason."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise BadRecord("missing_field", "a record is an object with a non-empty 'messages' list")
    messages = []
    for i, m in enumerate(record["messages"]):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise BadRecord("missing_field", f"messages[{i}] needs string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise BadRecord("unknown_role", f"messages[{i}].role={m['role']!r}; roles: {list(ROLES)}")
        if not m["content"].strip():
            raise BadRecord("empty_content", f"messages[{i}] ({m['role']}) has empty content")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no_assistant_turn", "no assistant message: nothing to learn from")
    return messages


def tokenize_chat(tokenizer: TextTokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered conversation and the assistant mask (see the module docstring)."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(messages[:i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and upto.startswith(before)):
            raise ValueError("the chat template does not render conversations incrementally (each prefix of the "
                             "conversation must render as a prefix of the whole): assistant tokens cannot be found")
        segments += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    whole = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    if not whole.startswith(done):
        raise ValueError("the chat template renders the whole conversation differently from its prefixes")
    segments.append((whole[len(done):], False))
    tokens: list[int] = []
    mask: list[bool] = []
    for text, is_assistant in segments:
        if text:
            ids = tokenizer.encode(text)
            tokens += ids
            mask += [is_assistant] * len(ids)
    return tokens, mask


def read_chat_files(files: list[Path], tokenizer: TextTokenizer, max_len: int,
                    quarantine: Quarantine | None) -> ChatData:
    """Every good conversation of ``files`` in file and line order; bad ones counted by reason and (when a
    quarantine is given: rank 0) written to it."""
    data = ChatData([], files=[str(f) for f in files])
    counts: dict[str, int] = {}
    for path in files:
        with open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                data.records_in += 1
                location = f"{path}:{line_no}"
                try:
                    try:
                        record = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError) as e:
                        raise BadRecord("invalid_json", str(e)) from None
                    messages = check_messages(record)
                    tokens, mask = tokenize_chat(tokenizer, messages)
                    if len(tokens) > max_len:
                        raise BadRecord("too_long", f"{len(tokens)} tokens > max_len {max_len}")
                except BadRecord as bad:
                    counts[bad.reason] = counts.get(bad.reason, 0) + 1
                    if quarantine is not None:
                        quarantine.add(bad.reason, location, raw, str(bad))
                    continue
                data.examples.append(ChatExample(tokens, mask, location))
    data.quarantined = dict(sorted(counts.items()))
    return data


# ---------------------------------------------------------------------------------------------
# rows: padded (one conversation each) or packed (several, positions restarting at 0)


@dataclass
class Row:
    tokens: list[int]
    assistant: list[bool]
    lengths: list[int]  # the conversations it holds (one unless packed)


def padded_rows(examples: list[ChatExample]) -> list[Row]:
    return [Row(e.tokens, e.assistant, [len(e.tokens)]) for e in examples]


def packed_rows(examples: list[ChatExample], max_len: int, seed: int) -> list[Row]:
    """Conversations in a seeded order, laid end to end into rows of at most ``max_len`` tokens (next fit)."""
    order = np.random.default_rng([seed, 0x5F7]).permutation(len(examples))
    rows: list[Row] = []
    current = Row([], [], [])
    for i in order:
        e = examples[int(i)]
        if current.lengths and len(current.tokens) + len(e.tokens) > max_len:
            rows.append(current)
            current = Row([], [], [])
        current.tokens += e.tokens
        current.assistant += e.assistant
        current.lengths.append(len(e.tokens))
    if current.lengths:
        rows.append(current)
    return rows


def collate(rows: list[Row], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """``tokens`` (B, T) padded on the right, ``loss_mask`` (B, T-1) over next-token targets (assistant tokens),
    ``real`` (B, T) real-token mask, and with packing ``positions`` (B, T) restarting at each conversation."""
    from lmhpc.align.trainer import packed_positions

    width = max(len(r.tokens) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    assistant = torch.zeros((len(rows), width), dtype=torch.bool)
    real = torch.zeros((len(rows), width), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.tokens)
        tokens[b, :n] = torch.tensor(r.tokens, dtype=torch.long)
        assistant[b, :n] = torch.tensor(r.assistant, dtype=torch.bool)
        real[b, :n] = True
    batch = {"tokens": tokens, "loss_mask": assistant[:, 1:], "real": real}
    if packed:
        batch["positions"] = torch.stack([packed_positions(r.lengths, width) for r in rows])
    return batch
