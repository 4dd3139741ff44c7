"""AI feedback as a multiple-choice question: how likely the model finds "(A)" and "(B)" after the question.

The question (the Constitutional AI paper's format)::

    Consider the following conversation between a human and an assistant:
    Human: <prompt>
    <principle's preference question>
    Options:
    (A) <response A>
    (B) <response B>
    The answer is:

is followed by " (A)" or " (B)". Each option's score is the log-probability of its tokens after the longest
token prefix the two texts share (a single next token when the options differ in one token; the shared prefix
would cancel anyway), and the two are normalised: ``p(A) = exp(s_A) / (exp(s_A) + exp(s_B))``. Asking in both
orders and averaging ``p(first response)`` cancels the model's preference for a position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.model.transformer import Transformer

OPTIONS = ("(A)", "(B)")


def question(prompt: str, preference: str, first: str, second: str) -> str:
    """The multiple-choice question comparing ``first`` (shown as A) and ``second`` (shown as B)."""
    return ("Consider the following conversation between a human and an assistant:\n"
            f"Human: {prompt}\n{preference}\nOptions:\n(A) {first}\n(B) {second}\nThe answer is:")


@dataclass(frozen=True)
class ScoredQuestion:
    """One question's option scores (summed log-probs after the shared prefix) and their normalised probabilities."""

    logprob_a: float
    logprob_b: float

    @property
    def p_a(self) -> float:
        top = max(self.logprob_a, self.logprob_b)
        a, b = math.exp(self.logprob_a - top), math.exp(self.logprob_b - top)
        return a / (a + b)

    @property
    def p_b(self) -> float:
        return 1.0 - self.p_a


def option_sequences(tokenizer: TextTokenizer, context: str, add_bos: bool, chat: bool
                     ) -> tuple[list[int], list[int], int]:
    """Token ids of the question followed by option A and by option B, and the length of their shared prefix.
    ``chat``: the question is a user turn of the chat template and the options start the assistant's reply."""
    if chat:
        context = tokenizer.apply_chat_template([{"role": "user", "content": context}], add_generation_prompt=True)
        texts = [context + o for o in OPTIONS]
    else:
        texts = [f"{context} {o}" for o in OPTIONS]
    seq_a, seq_b = (tokenizer.encode(t, add_bos=add_bos) for t in texts)
    shared = 0
    while shared < min(len(seq_a), len(seq_b)) and seq_a[shared] == seq_b[shared]:
        shared += 1
    if shared == 0 or shared == len(seq_a) or shared == len(seq_b):
        raise ValueError("the options must follow a shared, non-empty prefix and differ in their tokens")
    return seq_a, seq_b, shared


@torch.inference_mode()
def continuation_logprobs(model: Transformer, sequences: Sequence[tuple[list[int], int]], batch_size: int
                          ) -> list[float]:
    """For each ``(tokens, start)``: the summed log-probability of ``tokens[start:]`` given ``tokens[:start]``.
    Rows are right-padded (causal attention: padding after a row's tokens changes nothing before them) and run
    ``batch_size`` at a time, longest first."""
    from lmhpc.infer.routing import no_token_dropping

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i][0]))
    out = [0.0] * len(sequences)
    with no_token_dropping(model):
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            width = max(len(sequences[i][0]) for i in rows)
            tokens = torch.zeros(len(rows), width, dtype=torch.long)
            for r, i in enumerate(rows):
                ids = sequences[i][0]
                tokens[r, :len(ids)] = torch.tensor(ids)
            logprobs = torch.log_softmax(model(tokens.to(device)).float(), dim=-1)
            for r, i in enumerate(rows):
                ids, start = sequences[i]
                targets = torch.tensor(ids[start:], device=device)
                picked = logprobs[r, start - 1:len(ids) - 1].gather(1, targets[:, None])
                out[i] = float(picked.sum())
    return out


def score_questions(model: Transformer, tokenizer: TextTokenizer, contexts: Sequence[str], add_bos: bool, chat: bool,
                    batch_size: int) -> list[ScoredQuestion]:
    """Each question's option scores, all questions' sequences batched together."""
    sequences: list[tuple[list[int], int]] = []
    for context in contexts:
        seq_a, seq_b, shared = option_sequences(tokenizer, context, add_bos, chat)
        sequences += [(seq_a, shared), (seq_b, shared)]
    scores = continuation_logprobs(model, sequences, batch_size)
    return [ScoredQuestion(scores[2 * i], scores[2 * i + 1]) for i in range(len(contexts))]


def question_length(tokenizer: TextTokenizer, context: str, add_bos: bool, chat: bool) -> int:
    """Tokens of the longer of the two sequences a question is scored with."""
    seq_a, seq_b, _ = option_sequences(tokenizer, context, add_bos, chat)
    return max(len(seq_a), len(seq_b))
