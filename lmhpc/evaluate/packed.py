"""Forward passes over prefix trees: one shared context, then every continuation that follows it.

A row holds a context's tokens once, then each continuation's tokens (all but its last, which is only a
target). A continuation's tokens attend to the context and to their own earlier tokens, never to another
continuation's, and take the positions they would have right after the context. Each continuation is then
scored exactly as if ``context + continuation`` had been run alone, while the context is computed once.
Only the positions that predict a scored token go through the output layer.

This walks the :class:`~lmhpc.model.transformer.Transformer`'s own modules (the same weights and the same
operations as its ``forward``) with a tree mask and per-row positions; models with Mamba layers (their scan
cannot follow a tree) are run one request per row through ``forward`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_CHUNK = 1024  # scored positions per pass through the output layer


@dataclass
class Tree:
    """A context and the continuations scored after it (token ids)."""

    context: list[int]
    continuations: list[list[int]]

    @property
    def length(self) -> int:
        """Tokens in its row."""
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)

    @property
    def depth(self) -> int:
        """Positions its longest path needs (context + continuation, less the last target)."""
        return len(self.context) + max(len(c) for c in self.continuations) - 1


def supports_trees(model: nn.Module) -> bool:
    """True when every layer is attention (a tree mask is exact for attention, not for a recurrent scan)."""
    return all(getattr(layer, "kind", "attention") == "attention" for layer in model.layers.values())


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` with per-row angles: ``x`` (B, T, H, D), ``cos``/``sin`` (B, T, D/2)."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def _layout(trees: list[Tree], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                              list[list[list[tuple[int, int]]]]]:
    """Tokens (B, T), positions (B, T), attention mask (B, 1, T, T), and for each tree and continuation the
    (row index, target id) pairs whose logits score it."""
    width = max(t.length for t in trees)
    tokens = torch.zeros(len(trees), width, dtype=torch.long)
    positions = torch.zeros(len(trees), width, dtype=torch.long)
    branch = torch.full((len(trees), width), -1, dtype=torch.long)  # 0: context; j + 1: continuation j
    targets: list[list[list[tuple[int, int]]]] = []
    for b, tree in enumerate(trees):
        c = len(tree.context)
        tokens[b, :c] = torch.tensor(tree.context)
        positions[b, :c] = torch.arange(c)
        branch[b, :c] = 0
        at = c
        tree_targets = []
        for j, cont in enumerate(tree.continuations):
            body = cont[:-1]
            n = len(body)
            tokens[b, at:at + n] = torch.tensor(body, dtype=torch.long)
            positions[b, at:at + n] = torch.arange(c, c + n)
            branch[b, at:at + n] = j + 1
            rows = [c - 1] + list(range(at, at + n))
            tree_targets.append(list(zip(rows, cont)))
            at += n
        targets.append(tree_targets)
    index = torch.arange(width)
    causal = index[None, :, None] >= index[None, None, :]
    q_branch, k_branch = branch[:, :, None], branch[:, None, :]
    mask = causal & ((k_branch == 0) | (k_branch == q_branch)) & (k_branch >= 0)
    mask |= torch.eye(width, dtype=torch.bool)[None]  # padding rows attend to themselves (no empty softmax)
    return tokens.to(device), positions.to(device), mask[:, None].to(device), targets


def _hidden(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The final norm's input for a batch of tree rows."""
    cos, sin = model.rope_cos[positions], model.rope_sin[positions]
    h = model.tok_embeddings(tokens)
    for layer in model.layers.values():
        attention = layer.attention
        x = layer.mixer_norm(h)
        bsz, seqlen = x.shape[:2]
        q = _rope(attention.wq(x).view(bsz, seqlen, -1, attention.head_dim), cos, sin)
        k = _rope(attention.wk(x).view(bsz, seqlen, -1, attention.head_dim), cos, sin)
        v = attention.wv(x).view(bsz, seqlen, -1, attention.head_dim)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, enable_gqa=q.shape[2] != k.shape[2])
        h = h + attention.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))
        if hasattr(layer, "moe"):
            h = h + layer.moe(layer.ffn_norm(h), tokens)
        else:
            h = h + layer.feed_forward(layer.ffn_norm(h))
    return h


def _logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.output(model.norm(hidden))
    if model.args.mup_base_dim:
        logits = logits / model.args.width_mult
    return logits


@torch.inference_mode()
def score_trees(model: nn.Module, trees: list[Tree], device: torch.device) -> list[list[tuple[float, bool]]]:
    """For each tree and continuation: (sum of log-probabilities of its tokens, whether each token is the
    model's argmax: the harness's ``is_greedy``)."""
    tokens, positions, mask, targets = _layout(trees, device)
    hidden = _hidden(model, tokens, positions, mask)
    flat = [(b, row, target) for b, tree_targets in enumerate(targets) for cont in tree_targets
            for row, target in cont]
    rows = torch.tensor([(b, r) for b, r, _ in flat], device=device)
    wanted = torch.tensor([t for _, _, t in flat], device=device)
    picked_parts, greedy_parts = [], []
    for start in range(0, len(flat), HEAD_CHUNK):  # bounds the (targets × vocabulary) logits in memory
        part = slice(start, start + HEAD_CHUNK)
        logprobs = F.log_softmax(_logits(model, hidden[rows[part, 0], rows[part, 1]]).float(), dim=-1)
        picked_parts.append(logprobs.gather(-1, wanted[part, None])[:, 0].double().cpu())
        greedy_parts.append((logprobs.argmax(-1) == wanted[part]).cpu())
    picked, greedy = torch.cat(picked_parts), torch.cat(greedy_parts)
    out: list[list[tuple[float, bool]]] = []
    at = 0
    for tree_targets in targets:
        scores = []
        for cont in tree_targets:
            n = len(cont)
            scores.append((float(picked[at:at + n].sum()), bool(greedy[at:at + n].all())))
            at += n
        out.append(scores)
    return out


@torch.inference_mode()
def score_plain(model: nn.Module, trees: list[Tree], device: torch.device) -> list[list[tuple[float, bool]]]:
    """The same scores through ``model.forward``, one (context + continuation) sequence per row, right-padded:
    for layers a tree cannot go through."""
    seqs = [(i, j, tree.context + cont) for i, tree in enumerate(trees) for j, cont in enumerate(tree.continuations)]
    width = max(len(s) - 1 for _, _, s in seqs)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, (_, _, s) in enumerate(seqs):
        batch[r, :len(s) - 1] = torch.tensor(s[:-1])
    logprobs = F.log_softmax(model(batch.to(device)).float(), dim=-1).cpu()
    out: list[list[tuple[float, bool]]] = [[(0.0, False)] * len(t.continuations) for t in trees]
    for r, (i, j, _) in enumerate(seqs):
        cont = trees[i].continuations[j]
        start = len(trees[i].context) - 1
        rows = logprobs[r, start:start + len(cont)]
        wanted = torch.tensor(cont)
        out[i][j] = (float(rows.gather(-1, wanted[:, None]).double().sum()), bool((rows.argmax(-1) == wanted).all()))
    return out
