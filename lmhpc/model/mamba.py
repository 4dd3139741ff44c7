"""Mamba (selective state-space) mixer: a readable PyTorch reference of Gu & Dao (2023), section 3.

    x, z   = in_proj(u)                     (two branches of width d_inner = expand × dim)
    x      = silu(causal depthwise conv(x))
    Δ, B, C = x_proj(x)                     (input-dependent: this is the "selection")
    Δ      = softplus(dt_proj(Δ))
    h_t    = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t x_t        A = -exp(A_log), (d_inner, d_state)
    y_t    = C_t · h_t + D ⊙ x_t
    out    = out_proj(y ⊙ silu(z))

The scan is a plain loop over time (no fused kernel): exact and easy to read, linear in sequence
length, meant for tests and small models rather than speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.model.args import MambaArgs


def selective_scan(x: torch.Tensor, delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                   d: torch.Tensor) -> torch.Tensor:
    """The recurrence above for x, Δ (B, T, d_inner), A (d_inner, n), B, C (B, T, n), D (d_inner)."""
    bsz, seqlen, inner = x.shape
    decay = torch.exp(delta.unsqueeze(-1) * a)  # (B, T, d_inner, n)
    drive = (delta * x).unsqueeze(-1) * b.unsqueeze(2)  # (B, T, d_inner, n)
    h = x.new_zeros(bsz, inner, a.shape[1])
    ys = []
    for t in range(seqlen):
        h = decay[:, t] * h + drive[:, t]
        ys.append((h * c[:, t].unsqueeze(1)).sum(-1))
    return torch.stack(ys, dim=1) + x * d


class MambaMixer(nn.Module):
    """The Mamba block's token mixer, (B, T, dim) → (B, T, dim)."""

    def __init__(self, dim: int, args: MambaArgs) -> None:
        super().__init__()
        self.args = args
        inner = args.expand * dim
        self.dt_rank = args.resolved_dt_rank(dim)
        self.in_proj = nn.Linear(dim, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(inner, inner, args.d_conv, groups=inner, padding=args.d_conv - 1)
        self.x_proj = nn.Linear(inner, self.dt_rank + 2 * args.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(inner, args.d_state))
        self.D = nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, dim, bias=False)
        self.init_parameters(dim**-0.5, dim**-0.5)

    def init_parameters(self, std: float, out_std: float, generator: torch.Generator | None = None) -> None:
        """S4D-real A, unit D, Δ's bias so softplus(bias) is log-uniform in [dt_min, dt_max] (as in Mamba)."""
        inner, n = self.A_log.shape
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).expand(inner, n))
            self.D.fill_(1.0)
            nn.init.normal_(self.conv1d.weight, std=self.args.d_conv**-0.5, generator=generator)
            nn.init.zeros_(self.conv1d.bias)
            nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5, generator=generator)
            lo, hi = math.log(self.args.dt_min), math.log(self.args.dt_max)
            dt = torch.exp(torch.rand(inner, generator=generator) * (hi - lo) + lo).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        seqlen = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x = self.conv1d(x.transpose(1, 2))[..., :seqlen].transpose(1, 2)  # causal: drop the right padding
        x = F.silu(x)
        dt, b, c = self.x_proj(x).split([self.dt_rank, self.args.d_state, self.args.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))
        y = selective_scan(x.float(), delta.float(), -torch.exp(self.A_log.float()), b.float(), c.float(),
                           self.D.float()).type_as(u)
        return self.out_proj(y * F.silu(z))
