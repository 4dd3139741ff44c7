"""Rollouts: sampled completions of the policy (the KV-cache generator) as padded tensors, and per-token
log-probabilities of those completions under a model.

A :class:`Rollout` lays each sequence out as one row ``[prompt, completion, padding]``: padding only ever
follows the real tokens, so a plain causal forward (no attention mask) scores every real token exactly as the
sequence alone would. Completion position ``j`` of row ``i`` is token ``prompt_len[i] + j``, predicted by the
logits at ``prompt_len[i] + j − 1``.

Sampling is seeded per step (:func:`rollout_seed`): the completions of step ``s`` depend only on the run's seed,
``s`` and the weights, so a job resumed from a checkpoint samples what the uninterrupted one would have.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.infer.generate import Generator
from lmhpc.model.transformer import Transformer


def rollout_seed(seed: int, step: int, salt: str = "rollout") -> int:
    """The sampling seed of ``step``: a hash of (seed, step), independent of everything sampled before."""
    digest = hashlib.sha256(f"{salt}:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class Rollout:
    """Sequences ``[prompt, completion, padding]`` (B, L), their prompt and completion lengths (B,),
    the completion tokens (B, C) and their mask (B, C) (1: a generated token, 0: padding)."""

    tokens: torch.Tensor
    prompt_lens: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    completion_texts: list[str]
    finish_reasons: list[str]

    @property
    def completion_lens(self) -> torch.Tensor:
        return self.completion_mask.sum(-1).long()

    def select(self, rows: torch.Tensor | slice) -> Rollout:
        """The rollout of some of its rows."""
        index = torch.arange(self.tokens.size(0))[rows]
        return Rollout(self.tokens[index], self.prompt_lens[index], self.completion_ids[index],
                       self.completion_mask[index], [self.completion_texts[i] for i in index.tolist()],
                       [self.finish_reasons[i] for i in index.tolist()])


def build_rollout(prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]], pad_id: int,
                  texts: Sequence[str] | None = None, finish: Sequence[str] | None = None) -> Rollout:
    """A :class:`Rollout` from token lists (one prompt and one completion per row)."""
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts for {len(completion_ids)} completions")
    rows = len(prompt_ids)
    width = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    cwidth = max(max((len(c) for c in completion_ids), default=0), 1)
    tokens = torch.full((rows, width), pad_id, dtype=torch.long)
    comp = torch.full((rows, cwidth), pad_id, dtype=torch.long)
    mask = torch.zeros(rows, cwidth)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        seq = list(p) + list(c)
        tokens[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        if c:
            comp[i, :len(c)] = torch.tensor(list(c), dtype=torch.long)
            mask[i, :len(c)] = 1.0
    prompt_lens = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    return Rollout(tokens, prompt_lens, comp, mask, list(texts) if texts is not None else [""] * rows,
                   list(finish) if finish is not None else ["length"] * rows)


def sample(model: Transformer, tokenizer: TextTokenizer, prompt_ids: Sequence[Sequence[int]], group_size: int,
           max_new_tokens: int, temperature: float, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
           batch_size: int | None = None) -> Rollout:
    """``group_size`` completions of each prompt (rows ``i*group_size ... (i+1)*group_size − 1`` answer prompt
    ``i``), seeded by ``seed`` (``temperature`` 0: greedy). ``model`` is a whole model (not FSDP2 shards: the
    generator runs in inference mode, one rank alone)."""
    repeated = [list(p) for p in prompt_ids for _ in range(group_size)]
    was_training = model.training
    model.eval()
    try:
        completions = Generator(model, tokenizer, transpose_weights=False).generate(
            repeated, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            batch_size=batch_size)
    finally:
        model.train(was_training)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    return build_rollout(repeated, [c.token_ids for c in completions], pad, [c.text for c in completions],
                         [c.finish_reason for c in completions])


def completion_positions(rollout: Rollout) -> torch.Tensor:
    """(B, C) index of the logits that predict each completion token (clamped at padding)."""
    cwidth = rollout.completion_ids.size(1)
    index = rollout.prompt_lens[:, None] - 1 + torch.arange(cwidth)[None, :]
    return index.clamp(max=rollout.tokens.size(1) - 1)


def completion_logps(model: torch.nn.Module, rollout: Rollout, temperature: float = 1.0, entropy: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities (B, C) of the completion tokens under ``model`` with its logits divided by
    ``temperature`` (as TRL scores them), and optionally the entropy of each of those distributions.
    Padding positions hold 0. Gradients flow when the caller allows them."""
    device = next(model.parameters()).device
    tokens = rollout.tokens.to(device)
    logits = model(tokens)
    if logits.shape[-1] > 0 and temperature != 1.0:
        logits = logits / temperature
    index = completion_positions(rollout).to(device)
    picked = logits.gather(1, index[..., None].expand(-1, -1, logits.size(-1))).float()
    log_probs = torch.log_softmax(picked, dim=-1)
    mask = rollout.completion_mask.to(device)
    logps = log_probs.gather(-1, rollout.completion_ids.to(device)[..., None]).squeeze(-1) * mask
    ent = None
    if entropy:
        ent = -(log_probs.exp() * log_probs).sum(-1) * mask
    return logps, ent
