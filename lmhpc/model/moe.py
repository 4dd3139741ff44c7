"""Mixture-of-Experts feed-forward: a learned top-k router (or a fixed hash router) over SwiGLU experts.

- Top-k token choice: softmax over experts, the ``top_k`` best per token, weights renormalised over
  the chosen ones. Each expert takes at most ``capacity_factor × tokens × k / experts`` tokens (in
  token order); the rest are dropped from that expert (the residual carries them), and counted.
- Load-balancing loss (Switch / GShard): ``experts × Σ_e fraction_routed_e × mean_prob_e``; router
  z-loss (ST-MoE): ``mean(logsumexp(logits)²)``. Both are added to the gradient by an identity
  autograd function on the layer output, so they work in any pipeline stage; the training loop sets
  :attr:`MoE.loss_scale` to the weight its main loss gives this micro-batch.
- Hash routing (Roller et al., 2021): every token id goes to a fixed random expert; no router
  parameters, no auxiliary loss.
The layer keeps per-expert token counts and the auxiliary losses of the last steps for metrics.

Routing, capacity and combining happen here; the expert computation goes through one hook,
``self.experts(rows, counts)`` (rows grouped by expert, ``counts[e]`` rows each), which expert
parallelism (:mod:`lmhpc.train.parallel`) replaces with an all-to-all to the ranks owning the experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.model.args import MoEArgs


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on ``out``; in backward, ``aux`` receives gradient ``scale`` (adds scale·aux to the loss)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        ctx.aux_shape = aux.shape
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        grad_aux = torch.full(ctx.aux_shape, ctx.scale, dtype=grad_out.dtype, device=grad_out.device)
        return grad_out, grad_aux, None


def _first_pass() -> bool:
    """False while activation checkpointing recomputes the forward inside backward: statistics are
    counted once per token."""
    return torch._C._current_graph_task_id() == -1


def kept_assignments(flat_expert: torch.Tensor, num_experts: int,
                     capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (token, choice) assignments each expert keeps: its first ``capacity`` in token order.

    Returns the kept assignment indices grouped by expert (token order within an expert), the kept
    count per expert, and the routed count per expert (before the capacity cut)."""
    order = torch.argsort(flat_expert, stable=True)
    counts = torch.bincount(flat_expert, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_expert = torch.arange(flat_expert.numel(), device=flat_expert.device) - starts[flat_expert[order]]
    return order[rank_in_expert < capacity], counts.clamp(max=capacity), counts


class MoE(nn.Module):
    """SwiGLU experts stored as stacked weights (experts, in, out), routed per token."""

    def __init__(self, dim: int, hidden_dim: int, args: MoEArgs, vocab_size: int) -> None:
        super().__init__()
        self.args = args
        e = args.num_experts
        self.w1 = nn.Parameter(torch.empty(e, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(e, dim, hidden_dim))
        self.w2 = nn.Parameter(torch.empty(e, hidden_dim, dim))
        if args.router == "topk":
            self.gate = nn.Linear(dim, e, bias=False)
        else:
            table = torch.randint(0, e, (vocab_size,), generator=torch.Generator().manual_seed(args.hash_seed))
            self.register_buffer("hash_table", table, persistent=False)
        self.loss_scale = 1.0
        self.experts = self.local_experts  # replaced by expert parallelism
        self.register_buffer("tokens_per_expert", torch.zeros(e), persistent=False)
        self.register_buffer("dropped_tokens", torch.zeros(()), persistent=False)
        self.register_buffer("aux_losses", torch.zeros(2), persistent=False)  # load balance, z-loss (sums)
        self.register_buffer("aux_count", torch.zeros(()), persistent=False)

    def init_parameters(self, std: float, out_std: float, generator: torch.Generator | None = None) -> None:
        for w in (self.w1, self.w3):
            nn.init.normal_(w, std=std, generator=generator)
        nn.init.normal_(self.w2, std=out_std, generator=generator)

    def route(self, x: torch.Tensor, token_ids: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Expert indices (N, k), their weights (N, k) and the auxiliary loss (scalar) of N tokens."""
        if self.args.router == "hash":
            if token_ids is None:
                raise RuntimeError("hash routing needs the token ids (not available in a later pipeline stage)")
            experts = self.hash_table[token_ids.reshape(-1)].unsqueeze(-1)
            return experts, torch.ones_like(experts, dtype=x.dtype), x.new_zeros(())
        logits = self.gate(x).float()
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.args.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        e = self.args.num_experts
        routed = F.one_hot(experts, e).sum(dim=1).float()  # (N, E): 1 where a token chose the expert
        fraction = routed.mean(dim=0) / self.args.top_k
        balance = e * (fraction * probs.mean(dim=0)).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        if _first_pass():
            with torch.no_grad():
                self.aux_losses += torch.stack([balance.detach(), z_loss.detach()])
                self.aux_count += 1
        aux = self.args.load_balance_coef * balance + self.args.z_loss_coef * z_loss
        return experts, weights.to(x.dtype), aux

    def run_experts(self, rows: torch.Tensor, counts: list[int], w1: torch.Tensor, w3: torch.Tensor,
                    w2: torch.Tensor) -> torch.Tensor:
        """SwiGLU of expert ``e`` (weights ``w*[e]``) on its segment of ``rows`` (segments in expert order).
        Every expert runs, also on no rows, so every weight gets a gradient."""
        outs = []
        for e, h in enumerate(rows.split(counts)):
            outs.append((F.silu(h @ w1[e].to(h.dtype)) * (h @ w3[e].to(h.dtype))) @ w2[e].to(h.dtype))
        return torch.cat(outs)

    def local_experts(self, rows: torch.Tensor, counts: list[int]) -> torch.Tensor:
        return self.run_experts(rows, counts, self.w1, self.w3, self.w2)

    def forward(self, x: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        n = flat.shape[0]
        experts, weights, aux = self.route(flat, token_ids)
        k = experts.shape[1]
        flat_expert = experts.reshape(-1)
        flat_weight = weights.reshape(-1)
        token_of = torch.arange(n, device=x.device).repeat_interleave(k)
        capacity = math.ceil(self.args.capacity_factor * n * k / self.args.num_experts) \
            if self.args.capacity_factor > 0 else n * k
        kept, kept_counts, counts = kept_assignments(flat_expert, self.args.num_experts, capacity)
        tokens = token_of[kept]
        y = self.experts(flat[tokens], kept_counts.tolist())
        out = torch.zeros_like(flat).index_add_(0, tokens, y * flat_weight[kept, None])
        if _first_pass():
            with torch.no_grad():
                self.tokens_per_expert += counts.to(self.tokens_per_expert.dtype)
                self.dropped_tokens += (counts - kept_counts).sum()
        out = out.view(shape)
        if aux.requires_grad:
            out = _AttachAuxLoss.apply(out, aux, float(self.loss_scale))
        return out

    def pop_stats(self) -> dict[str, object]:
        """Per-expert load (fractions), dropped tokens and mean auxiliary losses since the last call."""
        total = float(self.tokens_per_expert.sum())
        count = max(float(self.aux_count), 1.0)
        stats = {
            "load": [float(c) / total if total else 0.0 for c in self.tokens_per_expert.tolist()],
            "dropped_fraction": float(self.dropped_tokens) / total if total else 0.0,
            "load_balance_loss": float(self.aux_losses[0]) / count,
            "z_loss": float(self.aux_losses[1]) / count,
        }
        for buf in (self.tokens_per_expert, self.dropped_tokens, self.aux_losses, self.aux_count):
            buf.zero_()
        return stats
