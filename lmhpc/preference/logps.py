"""Per-sequence log-probs of response tokens, with the per-token statistics TRL's DPO metrics log."""

from __future__ import annotations

import torch
from torch import nn

from lmhpc.preference.data import PairBatch
from lmhpc.preference.losses import SequenceScores


def response_scores(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                    stats: bool = True) -> SequenceScores:
    """Scores of each row's response tokens from the model's ``logits`` (N, T, V) of ``input_ids`` (N, T).

    Token ``t`` is predicted by position ``t-1``; only positions whose target is a response token
    (``response_mask``) are scored, so the log-softmax runs on those rows of the logits alone. Log-probs are
    computed in float32 whatever the logits' dtype. ``stats``: also the mean logit over the vocabulary, the
    entropy and whether the target is the argmax, summed per row (no gradient)."""
    target_mask = response_mask[:, 1:]
    rows = target_mask.nonzero(as_tuple=True)[0]
    return scores_of(logits[:, :-1][target_mask], input_ids[:, 1:][target_mask], rows, input_ids.shape[0], stats)


def scores_of(picked: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n: int, stats: bool = True
              ) -> SequenceScores:
    """Scores of ``n`` sequences from the logits ``picked`` (M, V) that predict response tokens ``targets`` (M,) of
    sequences ``rows`` (M,)."""
    picked = picked.float()
    log_z = torch.logsumexp(picked, dim=-1)
    token_logps = picked.gather(-1, targets[:, None]).squeeze(-1) - log_z
    logps = torch.zeros(n, dtype=torch.float32, device=picked.device).index_add(0, rows, token_logps)
    tokens = torch.zeros(n, dtype=torch.long, device=picked.device).index_add(0, rows, torch.ones_like(rows))
    scores = SequenceScores(logps, tokens)
    if stats:
        with torch.no_grad():
            d = picked.detach()
            probs = torch.softmax(d, dim=-1)
            entropy = log_z.detach() - (probs * d).sum(-1)
            zeros = torch.zeros(n, dtype=torch.float32, device=picked.device)
            scores.logit_sum = zeros.index_add(0, rows, d.mean(-1))
            scores.entropy_sum = zeros.clone().index_add(0, rows, entropy)
            scores.top1 = zeros.clone().index_add(0, rows, (d.argmax(-1) == targets).float())
    return scores


def split_pairs(scores: SequenceScores) -> tuple[SequenceScores, SequenceScores]:
    """The chosen half and the rejected half of a ``[chosen; rejected]`` batch's scores."""
    def half(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
        return None if t is None else t.chunk(2, dim=0)[i]

    return tuple(SequenceScores(*(half(getattr(scores, f), i) for f in  # type: ignore[return-value]
                                  ("logps", "tokens", "logit_sum", "entropy_sum", "top1"))) for i in (0, 1))


def batch_scores(model: nn.Module, batch: PairBatch, stats: bool = True) -> SequenceScores:
    """Forward a pair batch through a causal model (token ids → logits) and score its responses."""
    logits = model(batch.input_ids)
    return response_scores(logits, batch.input_ids, batch.response_mask, stats)


def packed_scores(model: nn.Module, packed: dict[str, torch.Tensor], stats: bool = True) -> SequenceScores:
    """Scores of a packed batch (:func:`lmhpc.preference.packing.pack_pairs`) in ``[chosen; rejected]`` order; the
    model's attention must be :func:`~lmhpc.preference.packing.shared_prompt_attention`."""
    logits = model(packed["input_ids"], packed["positions"])[0]
    return scores_of(logits[packed["source"]], packed["target"], packed["sequence"], packed["lengths"].numel(),
                     stats)
