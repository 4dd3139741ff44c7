"""Packed pair batches: each pair as ``prompt, chosen, rejected`` in one row, the prompt computed once.

The pairs of a micro-batch are laid end to end in a single row without padding. Positions restart at 0 with each
pair's prompt, continue through its chosen response, and restart at the prompt's length with its rejected response,
so that the rejected tokens have the positions they would have after the prompt alone. :func:`shared_prompt_attention`
reads that layout from the positions: a token attends to the earlier tokens of its own pair, except that a rejected
token never sees the chosen response. The log-probs are those of ``[prompt+chosen; prompt+rejected]`` rows, for
about half the tokens (the prompt once, no padding).

Each response token is scored from the logits of the position before it in its own sequence: for the first rejected
token that is the prompt's last position, as for the first chosen token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.model.transformer import Attention
from lmhpc.preference.data import PreferencePair


def shared_prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            positions: torch.Tensor | None) -> torch.Tensor:
    """Causal attention of (B, H, T, D) tensors under the packed-pair layout of ``positions`` (B, T): a token sees
    the earlier tokens of its segment (a run of consecutive positions) and, of its pair's first segment, those at
    positions before its segment's start. Plain causal attention without per-row positions."""
    gqa = q.shape[1] != k.shape[1]
    if positions is None or positions.dim() == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    t = positions.shape[1]
    prev = torch.cat([torch.full_like(positions[:, :1], -1), positions[:, :-1]], dim=1)
    new_pair = positions == 0
    starts = new_pair | (positions != prev + 1)
    pair = torch.cumsum(new_pair.to(torch.int32), dim=1)
    segment = torch.cumsum(starts.to(torch.int32), dim=1)
    index = torch.arange(t, device=positions.device).expand_as(positions)
    start_index = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    start_pos = positions.gather(1, start_index)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    visible = (pair[:, :, None] == pair[:, None, :]) & (
        (segment[:, :, None] == segment[:, None, :]) | (positions[:, None, :] < start_pos[:, :, None]))
    mask = (visible & causal)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def use_shared_prompt_attention(model: nn.Module) -> None:
    """Make every attention module of ``model`` use :func:`shared_prompt_attention` (plain causal attention when
    called without per-row positions)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.attend = shared_prompt_attention


def pack_pairs(pairs: Sequence[PreferencePair]) -> dict[str, torch.Tensor]:
    """One row of ``prompt, chosen, rejected`` per pair, end to end: ``input_ids`` and ``positions`` (1, T);
    ``source`` (M,), the index whose logits score each response token, ``target`` (M,) its id, ``sequence`` (M,)
    its sequence (pair ``i``'s chosen response is ``i``, its rejected one ``B + i``); ``lengths`` (2B,) the tokens
    of each ``prompt+response`` sequence."""
    ids: list[int] = []
    pos: list[int] = []
    source: list[int] = []
    target: list[int] = []
    sequence: list[int] = []
    n = len(pairs)
    for i, p in enumerate(pairs):
        o, lp, lc, lr = len(ids), len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)
        ids += [*p.prompt_ids, *p.chosen_ids, *p.rejected_ids]
        pos += [*range(lp + lc), *range(lp, lp + lr)]
        source += [*range(o + lp - 1, o + lp + lc - 1), o + lp - 1, *range(o + lp + lc, o + lp + lc + lr - 1)]
        target += [*p.chosen_ids, *p.rejected_ids]
        sequence += [i] * lc + [n + i] * lr
    lengths = [p.chosen_length for p in pairs] + [p.rejected_length for p in pairs]
    return {"input_ids": torch.tensor([ids]), "positions": torch.tensor([pos]), "source": torch.tensor(source),
            "target": torch.tensor(target), "sequence": torch.tensor(sequence), "lengths": torch.tensor(lengths)}
