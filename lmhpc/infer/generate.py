"""Text generation with a KV cache: batched prompts (left-padded), greedy or seeded sampling, stop strings.

    gen = Generator(model, tokenizer)
    [c] = gen.generate(["Once upon a time"], max_new_tokens=64, temperature=0.8, top_p=0.95, seed=0)
    c.text, c.token_ids, c.finish_reason, c.logprobs

A batch is prefilled in one forward (prompts left-padded to the longest), then decoded one token per
forward. A row ends at an end token (the tokenizer's EOS; in chat mode also ``<|im_end|>``), at a stop
string, or after ``max_new_tokens``; the batch ends when every row has. Mixture-of-Experts layers drop no
token here (:mod:`lmhpc.infer.routing`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.infer.layout import TransposedWeights
from lmhpc.infer.routing import no_token_dropping
from lmhpc.infer.sampling import SamplingParams, next_tokens
from lmhpc.model.cache import InferenceCache
from lmhpc.model.transformer import Transformer

Message = Mapping[str, str]
Prompt = str | Sequence[int] | Sequence[Message]
CHAT_END = "<|im_end|>"
STATIC_SLOTS = 256  # compiled decoding: cache lengths are rounded up to a multiple of this (fewer recompiles)


@dataclass
class Completion:
    """One prompt's continuation.

    ``token_ids``: the generated tokens, the end token included (eos) and up to the token that completed a
    stop string (stop). ``text``: their text, without the end token, cut before the stop string.
    ``logprobs``: the model's log-probability of each of ``token_ids`` (log-softmax of its logits, before
    temperature, penalty and filtering), when asked for."""

    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: Literal["eos", "stop", "length"]
    logprobs: list[float] | None = None


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index in ``text`` where the earliest of ``stops`` begins (searching from ``start``), or None."""
    hits = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


class Generator:
    """Generates with ``model`` (our :class:`Transformer`, any device and dtype) and its ``tokenizer``.
    ``transpose_weights``: decode float32 CPU linear layers through transposed copies of their weights
    (:mod:`lmhpc.infer.layout`: faster, at the cost of a second copy of those weights). ``compile``: decoding
    steps go through ``torch.compile`` over the static KV cache (:mod:`lmhpc.infer.compiled`; dense
    attention-only models; the first batch of each shape compiles), with ``compile_mode`` ("reduce-overhead":
    CUDA graphs on GPU)."""

    def __init__(self, model: Transformer, tokenizer: TextTokenizer, transpose_weights: bool = True,
                 compile: bool = False, compile_mode: str | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.decode_step = None
        if compile:
            from lmhpc.infer.compiled import CompiledDecodeStep

            self.decode_step = CompiledDecodeStep(model, compile_mode)
            transpose_weights = False  # the compiler lays the weights out itself
        self.layout = TransposedWeights() if transpose_weights else None
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    def encode(self, prompt: Prompt, chat: bool = False, add_bos: bool = False) -> list[int]:
        """Token ids of a prompt: text, token ids (taken as they are), or with ``chat`` a user message or a
        list of ``{"role", "content"}`` messages rendered by the tokenizer's chat template."""
        if isinstance(prompt, str) and not chat:
            text = prompt
        elif chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        else:
            return [int(t) for t in prompt]  # type: ignore[union-attr]
        ids = self.tokenizer.encode(text)
        bos = self.tokenizer.bos_id
        if add_bos and bos is not None and ids[:1] != [bos]:  # a template may render the BOS itself
            ids = [bos, *ids]
        return ids

    def end_ids(self, chat: bool) -> set[int]:
        """Tokens that end a row: the tokenizer's EOS, and in chat mode the end of a turn."""
        ids = {self.tokenizer.eos_id} if self.tokenizer.eos_id is not None else set()
        chat_end = self.tokenizer.token_id(CHAT_END) if chat else None
        return ids | ({chat_end} if chat_end is not None else set())

    def generate(self, prompts: Sequence[Prompt], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, stop: Sequence[str] = (),
                 seed: int | None = None, chat: bool = False, add_bos: bool = False, logprobs: bool = False,
                 batch_size: int | None = None, ignore_eos: bool = False) -> list[Completion]:
        """One :class:`Completion` per prompt, in order (see the module docstring). ``seed``: the same seed
        gives the same completions for the same prompts and batch size (None: fresh randomness).
        ``batch_size``: prompts per forward batch (default all); batches hold prompts of similar length.
        ``ignore_eos``: end tokens do not end a row (fixed-length generation, as benchmarks want)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        params = SamplingParams(temperature, top_k, top_p, repetition_penalty)
        encoded = [self.encode(p, chat, add_bos) for p in prompts]
        if any(not ids for ids in encoded):
            raise ValueError("a prompt encodes to no tokens (add_bos=True gives it one)")
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        size = batch_size or max(len(encoded), 1)
        results: dict[int, Completion] = {}
        layout = self.layout.applied(self.model) if self.layout is not None else nullcontext()
        with torch.inference_mode(), no_token_dropping(self.model), layout:
            for first in range(0, len(order), size):
                rows = order[first:first + size]
                batch = self._generate_batch([encoded[i] for i in rows], max_new_tokens, params, tuple(stop),
                                             set() if ignore_eos else self.end_ids(chat), logprobs, generator)
                results.update(zip(rows, batch))
        return [results[i] for i in range(len(encoded))]

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
                        stop: tuple[str, ...], end_ids: set[int], want_logprobs: bool,
                        generator: torch.Generator) -> list[Completion]:
        bsz, width = len(prompts), max(len(p) for p in prompts)
        limit = self.model.args.max_seq_len
        if width + max_new_tokens > limit:
            raise ValueError(f"a prompt of {width} tokens + {max_new_tokens} new ones exceeds the model's "
                             f"max_seq_len {limit}")
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        tokens = torch.full((bsz, width), pad, dtype=torch.long)
        mask = torch.zeros(bsz, width, dtype=torch.bool)
        for row, ids in enumerate(prompts):
            tokens[row, width - len(ids):] = torch.tensor(ids)
            mask[row, width - len(ids):] = True
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        seen = None
        if params.repetition_penalty != 1.0:
            vocab = self.model.args.vocab_size
            seen = torch.zeros(bsz, vocab, dtype=torch.bool, device=self.device)
            rows_of, _ = mask.nonzero(as_tuple=True)
            seen[rows_of, tokens[mask]] = True  # the prompt's real tokens (padding is no token of the row)
        slots = width + max_new_tokens
        if self.decode_step is not None:  # the compiled step's shapes: one graph per batch size and 256 slots
            slots = -(-slots // STATIC_SLOTS) * STATIC_SLOTS
        cache = InferenceCache(self.model.args, bsz, slots, self.device, self.dtype)
        logits = self._logits(tokens, cache, mask)
        rows = [_Row(p) for p in prompts]
        end_tensor = torch.tensor(sorted(end_ids), dtype=torch.long, device=self.device)
        for step in range(max_new_tokens):
            choosable = logits
            if logits.shape[-1] > self.tokenizer.vocab_size:  # ids of a vocabulary padded for the hardware
                choosable = logits.clone()
                choosable[:, self.tokenizer.vocab_size:] = float("-inf")
            chosen = next_tokens(choosable, params, seen, generator)
            if want_logprobs:
                chosen_logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, chosen[:, None])[:, 0].tolist()
            ended = torch.isin(chosen, end_tensor).tolist()
            for row, token in enumerate(chosen.tolist()):
                r = rows[row]
                if r.finish is not None:
                    continue
                r.tokens.append(token)
                if want_logprobs:
                    r.logprobs.append(chosen_logprobs[row])
                if ended[row]:
                    r.finish = "eos"
                elif stop and r.hits_stop(self.tokenizer, stop):
                    r.finish = "stop"
                elif step == max_new_tokens - 1:
                    r.finish = "length"
            if all(r.finish is not None for r in rows):
                break
            if seen is not None:
                seen.scatter_(1, chosen[:, None], True)
            if self.decode_step is not None:
                logits = self.decode_step(chosen[:, None], cache)
            else:
                logits = self._logits(chosen[:, None], cache)
        return [r.completion(self.tokenizer, stop, want_logprobs) for r in rows]

    def _logits(self, tokens: torch.Tensor, cache: InferenceCache, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The next-token logits (B, vocab) after ``tokens``."""
        return self.model(tokens, cache=cache, token_mask=mask, last_only=True)[:, -1]


class _Row:
    """One row's generated tokens and state while its batch decodes."""

    def __init__(self, prompt: list[int]) -> None:
        self.prompt = prompt
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.finish: Literal["eos", "stop", "length"] | None = None
        self.checked = 0  # text length already searched for stop strings

    def text(self, tokenizer: TextTokenizer, tokens: list[int]) -> str:
        """The text ``tokens`` add after the prompt. Decoded after the prompt's last tokens, so that a leading
        space (sentencepiece's "▁" drops when a text starts with it) is kept."""
        tail = self.prompt[-4:]
        before, text = tokenizer.decode(tail), tokenizer.decode(tail + tokens)
        return text[len(before):] if text.startswith(before) else tokenizer.decode(tokens)

    def hits_stop(self, tokenizer: TextTokenizer, stop: tuple[str, ...]) -> bool:
        text = self.text(tokenizer, self.tokens)
        # a stop string may end in the new text while starting in the old
        hit = find_stop(text, stop, max(0, self.checked - max(len(s) for s in stop) + 1))
        self.checked = len(text)
        return hit is not None

    def completion(self, tokenizer: TextTokenizer, stop: tuple[str, ...], want_logprobs: bool) -> Completion:
        body = self.tokens[:-1] if self.finish == "eos" else self.tokens
        text = self.text(tokenizer, body)
        if self.finish == "stop":
            text = text[:find_stop(text, stop)]
        return Completion(self.prompt, self.tokens, text, self.finish or "length",
                          self.logprobs if want_logprobs else None)
