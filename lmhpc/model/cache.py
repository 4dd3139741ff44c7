"""State kept between the forward passes of incremental decoding.

One :class:`InferenceCache` per batch being generated: for each attention layer a preallocated key/value
buffer (B, kv_heads, max_len, head_dim), written in place (grouped-query attention stores only the KV
heads), and for each Mamba layer its recurrent state (the depthwise convolution's last inputs and the SSM
state). Every row shares the slot index; rows may hold padding in some slots (left padding of prompts of
different lengths): ``valid`` marks the slots holding real tokens, a row's positions count only its real
tokens, and the attention mask hides the other slots. Attention takes padding anywhere; a Mamba layer only
before a row's first real token (its convolution would otherwise see the padding as the previous inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lmhpc.model.args import ModelArgs
from lmhpc.model.mamba import MambaMixer


@dataclass
class AttentionCache:
    """Keys and values of one attention layer, (B, kv_heads, max_len, head_dim) each."""

    k: torch.Tensor
    v: torch.Tensor


@dataclass
class MambaState:
    """One Mamba layer's state: the last ``d_conv - 1`` conv inputs (B, d_inner, d_conv - 1) and the SSM
    state (B, d_inner, d_state), kept in float32 like the scan."""

    conv: torch.Tensor
    ssm: torch.Tensor


class InferenceCache:
    """Per-layer decoding state for ``batch`` rows of up to ``max_len`` slots (prompt + new tokens)."""

    def __init__(self, args: ModelArgs, batch: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.batch, self.max_len, self.max_positions = batch, max_len, args.max_seq_len
        self.has_mamba = any(args.layer_kind(i) == "mamba" for i in range(args.n_layers))
        self.layers: dict[int, AttentionCache | MambaState] = {}
        for i in range(args.n_layers):
            if args.layer_kind(i) == "attention":
                shape = (batch, args.kv_heads, max_len, args.head_dim)
                self.layers[i] = AttentionCache(torch.zeros(shape, device=device, dtype=dtype),
                                                torch.zeros(shape, device=device, dtype=dtype))
            else:
                inner = args.mamba.expand * args.dim
                self.layers[i] = MambaState(
                    torch.zeros(batch, inner, args.mamba.d_conv - 1, device=device, dtype=dtype),
                    torch.zeros(batch, inner, args.mamba.d_state, device=device, dtype=torch.float32))
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.next_position = torch.zeros(batch, dtype=torch.long, device=device)
        self.length = 0  # slots filled so far
        # set by begin() for the chunk being processed
        self.start = 0
        self.token_mask: torch.Tensor | None = None
        self.attn_mask: torch.Tensor | None = None
        self.is_causal = False
        self.pending_tree: tuple[torch.Tensor, torch.Tensor] | None = None

    def set_tree(self, ancestors: torch.Tensor, depths: torch.Tensor) -> None:
        """The next chunk is a tree of candidate continuations (all tokens real): ``ancestors`` (T, T) bool,
        true where token j is token i's ancestor or i itself, and ``depths`` (T,) each token's distance from
        the tree's root. In that chunk a token sees the cached slots and its ancestors, at position (next
        position + depth); :meth:`keep` afterwards holds on to one path of it."""
        self.pending_tree = (ancestors, depths)

    def begin(self, num_tokens: int, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Take the next ``num_tokens`` slots for a chunk whose real tokens are ``token_mask`` (B, T) (None:
        all real); return each token's position (B, T) and prepare the chunk's attention mask."""
        if self.pending_tree is not None:
            tree, self.pending_tree = self.pending_tree, None
            if tree[0].shape != (num_tokens, num_tokens) or token_mask is not None:
                raise ValueError(f"a tree chunk of {num_tokens} real tokens needs ({num_tokens}, {num_tokens}) "
                                 f"ancestors, got {tuple(tree[0].shape)}")
            return self._begin_tree(num_tokens, *tree)
        start, end = self.length, self.length + num_tokens
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} slots; {end} needed")
        device = self.valid.device
        if token_mask is None:
            token_mask = torch.ones(self.batch, num_tokens, dtype=torch.bool, device=device)
        token_mask = token_mask.to(device=device, dtype=torch.bool)
        self.valid[:, start:end] = token_mask
        if self.has_mamba and not bool(token_mask.all()):
            after_real = self.valid[:, :end].long().cumsum(1) > 0
            if bool((after_real & ~self.valid[:, :end]).any()):
                raise ValueError("padding after a row's first real token: Mamba layers take left padding only")
        positions = (self.next_position[:, None] + token_mask.long().cumsum(1) - 1).clamp(min=0)
        self.next_position += token_mask.long().sum(1)
        if int(self.next_position.max()) > self.max_positions:
            raise ValueError(f"a row reaches position {int(self.next_position.max()) - 1}; the model's rotary "
                             f"tables end at {self.max_positions - 1} (model max_seq_len)")
        self.start = start
        all_valid = bool(self.valid[:, :end].all())
        self.token_mask = None if bool(token_mask.all()) else token_mask
        self.is_causal = all_valid and start == 0 and num_tokens > 1
        if all_valid and (num_tokens == 1 or start == 0):
            self.attn_mask = None  # one new token sees every slot; a first chunk is plainly causal
        else:
            query_slot = torch.arange(start, end, device=device)[:, None]
            key_slot = torch.arange(end, device=device)[None, :]
            causal = key_slot <= query_slot  # (T, end)
            # a padding slot attends to itself only: no real token sees it, and no row of the softmax is empty
            allowed = (self.valid[:, None, :end] & causal) | (key_slot == query_slot)
            self.attn_mask = allowed[:, None]  # (B, 1, T, end)
        return positions

    def _begin_tree(self, num_tokens: int, ancestors: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
        start, end = self.length, self.length + num_tokens
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} slots; {end} needed")
        if self.has_mamba:
            raise ValueError("tree attention needs attention-only models (a Mamba state follows one sequence)")
        device = self.valid.device
        self.valid[:, start:end] = True
        positions = self.next_position[:, None] + depths.to(device)[None]
        if int(positions.max()) >= self.max_positions:
            raise ValueError(f"a row reaches position {int(positions.max())}; the model's rotary tables end at "
                             f"{self.max_positions - 1} (model max_seq_len)")
        allowed = torch.zeros(self.batch, num_tokens, end, dtype=torch.bool, device=device)
        allowed[:, :, :start] = self.valid[:, None, :start]
        allowed[:, :, start:] = ancestors.to(device)[None]
        self.start, self.token_mask, self.is_causal = start, None, False
        self.attn_mask = allowed[:, None]
        return positions

    def keep(self, start: int, chosen: list[int]) -> None:
        """After a tree chunk that began at slot ``start``: keep its tokens ``chosen`` (indices in the chunk,
        a path from the root, in order) as the next slots, and forget the rest of the chunk."""
        if not chosen or chosen != sorted(set(chosen)):
            raise ValueError(f"the kept tokens must be increasing chunk indices, got {chosen}")
        index = torch.tensor(chosen, device=self.valid.device) + start
        if chosen != list(range(len(chosen))):
            for entry in self.layers.values():
                assert isinstance(entry, AttentionCache)
                for buf in (entry.k, entry.v):
                    buf[:, :, start:start + len(chosen)] = buf[:, :, index]
        self.valid[:, start + len(chosen):] = False
        self.valid[:, start:start + len(chosen)] = True
        self.length = start + len(chosen)
        self.next_position = self.valid[:, :self.length].long().sum(1)

    def end(self, num_tokens: int) -> None:
        """The chunk's slots are filled."""
        self.length += num_tokens

    def truncate(self, length: int) -> None:
        """Forget every slot from ``length`` on, as if only the first ``length`` had been filled (tokens that
        speculative decoding did not keep). Attention layers only: a Mamba state cannot be rewound."""
        if self.has_mamba:
            raise ValueError("a cache with Mamba layers cannot be truncated (their state cannot be rewound)")
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} slots to {length}")
        self.valid[:, length:] = False
        self.next_position = self.valid[:, :length].long().sum(1)
        self.length = length

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Store the chunk's keys/values (B, kv_heads, T, D) in layer ``layer``'s buffers and attend the
        queries (B, heads, T, D) to every slot so far."""
        entry = self.layers[layer]
        assert isinstance(entry, AttentionCache)
        start, end = self.start, self.start + q.shape[2]
        entry.k[:, :, start:end] = k
        entry.v[:, :, start:end] = v
        keys, values = entry.k[:, :, :end], entry.v[:, :, :end]
        if q.shape[2] == 1:
            return decode_attention(q, keys, values, self.attn_mask)
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=self.attn_mask, is_causal=self.is_causal,
                                              enable_gqa=q.shape[1] != keys.shape[1])

    def mamba_state(self, layer: int) -> MambaState:
        entry = self.layers[layer]
        assert isinstance(entry, MambaState)
        return entry


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """A few queries per row (B, heads, T, D) against the cached keys/values (B, kv_heads, S, D), in float32;
    ``mask`` (B, 1, T, S) or None (every slot visible).

    The query heads that share a KV head go in one matmul against it (no copy of K/V per query head). On
    CPU this beats ``scaled_dot_product_attention``, whose kernel is tuned for long queries, several times
    over in bfloat16 (and is no slower in float32)."""
    bsz, heads, length, dim = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(bsz, kv_heads, (heads // kv_heads) * length, dim).float()
    scores = grouped @ k.float().transpose(-1, -2) * dim**-0.5  # (B, kv_heads, group × T, S)
    if mask is not None:
        scores = scores.unflatten(2, (heads // kv_heads, length)).masked_fill(~mask[:, :, None], float("-inf"))
        scores = scores.flatten(2, 3)
    out = scores.softmax(dim=-1) @ v.float()
    return out.to(q.dtype).reshape(bsz, heads, length, dim)


def mamba_cached(mixer: MambaMixer, u: torch.Tensor, state: MambaState,
                 token_mask: torch.Tensor | None) -> torch.Tensor:
    """``mixer`` on a chunk ``u`` (B, T, dim) that continues the sequence ``state`` holds; updates ``state``.

    Padding (``token_mask`` false) comes before a row's real tokens only: its conv input is zero, which is
    what a shorter sequence sees as the conv's left padding, and the SSM state stays zero through it.
    The math is :meth:`MambaMixer.forward`'s, step by step."""
    x, z = mixer.in_proj(u).chunk(2, dim=-1)
    if token_mask is not None:
        x = x * token_mask[..., None].to(x.dtype)
    window = torch.cat([state.conv, x.transpose(1, 2)], dim=2)  # (B, d_inner, d_conv - 1 + T)
    state.conv.copy_(window[..., window.shape[2] - state.conv.shape[2]:])
    x = F.conv1d(window, mixer.conv1d.weight, mixer.conv1d.bias, groups=window.shape[1]).transpose(1, 2)
    x = F.silu(x)
    d_state = mixer.args.d_state
    dt, b, c = mixer.x_proj(x).split([mixer.dt_rank, d_state, d_state], dim=-1)
    delta = F.softplus(mixer.dt_proj(dt)).float()
    x32 = x.float()
    decay = torch.exp(delta.unsqueeze(-1) * -torch.exp(mixer.A_log.float()))  # (B, T, d_inner, n)
    drive = (delta * x32).unsqueeze(-1) * b.float().unsqueeze(2)
    h = state.ssm
    ys = []
    for t in range(u.shape[1]):
        h = decay[:, t] * h + drive[:, t]
        ys.append((h * c[:, t].float().unsqueeze(1)).sum(-1))
    state.ssm.copy_(h)
    y = (torch.stack(ys, dim=1) + x32 * mixer.D.float()).type_as(u)
    return mixer.out_proj(y * F.silu(z))
