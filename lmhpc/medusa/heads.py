"""Medusa heads (Cai et al. 2024, Medusa-1): K extra heads on a frozen model's last hidden state.

Head ``k`` (0-based) reads the final-norm hidden state at position t and predicts token t + k + 2 (the model's own
output layer predicts t + 1). A head is ``ResBlock``s (``x + SiLU(W x)``, W zero-initialised: the identity at
first) then a vocabulary projection: the model's own output layer (``share_output``, the default: nothing but
the ResBlocks to train or store, and the K heads' logits come from one pass over the output weights), or a
linear layer of its own initialised from it. Saved as ``heads.safetensors`` + ``medusa.json`` in a folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.model.transformer import Transformer

HEADS_FILE = "heads.safetensors"
META_FILE = "medusa.json"


@dataclass(frozen=True)
class HeadsArgs:
    dim: int
    vocab_size: int
    num_heads: int = 3
    num_layers: int = 1  # ResBlocks per head
    share_output: bool = True

    def __post_init__(self) -> None:
        if self.num_heads < 1 or self.num_layers < 0:
            raise ValueError(f"Medusa heads need num_heads >= 1 and num_layers >= 0, got {self.num_heads}, "
                             f"{self.num_layers}")


class ResBlock(nn.Module):
    """``x + SiLU(W x + b)``, W and b zero at initialisation."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.Module):
    """The K heads. :meth:`forward`: hidden states (..., dim) → logits (..., K, vocab) through ``output``
    (the base model's output layer) or the heads' own projections."""

    def __init__(self, args: HeadsArgs, base_output: nn.Module | None = None) -> None:
        super().__init__()
        self.args = args
        self.blocks = nn.ModuleList(nn.Sequential(*[ResBlock(args.dim) for _ in range(args.num_layers)])
                                    for _ in range(args.num_heads))
        self.projections = None
        if not args.share_output:
            self.projections = nn.ModuleList(nn.Linear(args.dim, args.vocab_size, bias=False)
                                             for _ in range(args.num_heads))
            if base_output is not None:
                with torch.no_grad():
                    for p in self.projections:
                        p.weight.copy_(base_output.weight)

    def features(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each head's ResBlock output (..., K, dim)."""
        return torch.stack([block(hidden) for block in self.blocks], dim=-2)

    def forward(self, hidden: torch.Tensor, output: nn.Module) -> torch.Tensor:
        feats = self.features(hidden)
        if self.projections is None:
            return output(feats)
        return torch.stack([p(feats[..., k, :]) for k, p in enumerate(self.projections)], dim=-2)


def base_logits(model: Transformer, normed: torch.Tensor) -> torch.Tensor:
    """The model's logits from its final-norm hidden states (its output layer and μP scale)."""
    logits = model.output(normed)
    return logits / model.args.width_mult if model.args.mup_base_dim else logits


def head_logits(model: Transformer, heads: MedusaHeads, normed: torch.Tensor) -> torch.Tensor:
    """The heads' logits (..., K, vocab) on the model's final-norm hidden states (same μP scale as the model)."""
    logits = heads(normed, model.output)
    return logits / model.args.width_mult if model.args.mup_base_dim else logits


@contextmanager
def captured_hidden(model: Transformer) -> Iterator[list[torch.Tensor]]:
    """Inside the block, each forward of ``model`` appends its final-norm hidden states (B, T, dim) to the
    yielded list (the input of its output layer)."""
    if model.norm is None or model.output is None:
        raise ValueError("Medusa heads need a whole model (its final norm and output layer)")
    seen: list[torch.Tensor] = []
    handle = model.norm.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


def final_hidden(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's final-norm hidden states (B, T, dim) of token windows, without computing its logits."""
    last = list(model.layers.values())[-1]
    seen: list[torch.Tensor] = []
    handle = last.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        model(tokens, last_only=True)
    finally:
        handle.remove()
    return model.norm(seen[-1])


TARGETS = ("distill", "tokens")


def medusa_loss(model: Transformer, heads: MedusaHeads, tokens: torch.Tensor, decay: float = 0.8,
                target: str = "distill", agreement_rows: int = 256) -> tuple[torch.Tensor, list[float]]:
    """The heads' training loss on token windows (B, T) with the model frozen: Σ_k decay^k × loss_k, where head
    k reads the hidden state at position t and is scored on token t + k + 2 against

    - ``"distill"``: the model's next-token distribution at position t + k + 1 (KL divergence: what decoding
      accepts);
    - ``"tokens"``: the data's token (cross-entropy, Medusa's original recipe).

    Also each head's top-1 agreement with the model's own greedy token there (on up to ``agreement_rows``
    positions): the acceptance of a one-node chain."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    with torch.no_grad():
        normed = final_hidden(model, tokens)
    total = torch.zeros((), device=tokens.device)
    agree = []
    for k in range(heads.args.num_heads):
        shift = k + 2
        if tokens.shape[1] <= shift:
            break
        feats = heads.blocks[k](normed[:, :-shift]).flatten(0, 1)
        want_hidden = normed[:, shift - 1:-1].flatten(0, 1)
        proj = model.output if heads.projections is None else heads.projections[k]
        scale = 1 / model.args.width_mult if model.args.mup_base_dim else 1.0
        out = proj(feats).float() * scale
        if target == "tokens":
            loss = F.cross_entropy(out, tokens[:, shift:].flatten())
        else:
            with torch.no_grad():
                teacher = (model.output(want_hidden).float() * scale).log_softmax(-1)
            loss = F.kl_div(out.log_softmax(-1), teacher, log_target=True, reduction="batchmean")
        total = total + decay**k * loss
        with torch.no_grad():
            rows = torch.linspace(0, feats.shape[0] - 1, min(agreement_rows, feats.shape[0])).long()
            mine = proj(feats[rows]).argmax(-1)
            agree.append(float((mine == model.output(want_hidden[rows]).argmax(-1)).float().mean()))
    return total, agree


def save_heads(folder: Path, heads: MedusaHeads, extra: dict | None = None) -> None:
    """``heads.safetensors`` (the trainable weights) and ``medusa.json`` (their shape, ``extra``) in ``folder``."""
    from safetensors.torch import save_file

    from lmhpc.fsutil import atomic_path, write_json

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in heads.state_dict().items()}
    with atomic_path(folder / HEADS_FILE) as tmp:
        save_file(state, str(tmp))
    write_json(folder / META_FILE, {"heads": asdict(heads.args), **(extra or {})})


def load_heads(folder: str | Path, model: Transformer) -> MedusaHeads:
    """The heads saved in ``folder`` (a medusa stage folder or any folder :func:`save_heads` wrote), for
    ``model`` (its width and vocabulary must be theirs)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file() or not (folder / HEADS_FILE).is_file():
        raise FileNotFoundError(f"{folder}: no Medusa heads ({META_FILE} and {HEADS_FILE}): run the medusa stage")
    args = HeadsArgs(**json.loads(meta_path.read_text())["heads"])
    if (args.dim, args.vocab_size) != (model.args.dim, model.args.vocab_size):
        raise ValueError(f"{folder}: heads of width {args.dim} and vocabulary {args.vocab_size} do not fit a "
                         f"model of width {model.args.dim} and vocabulary {model.args.vocab_size}")
    param = next(model.parameters())
    heads = MedusaHeads(args)
    heads.load_state_dict(load_file(str(folder / HEADS_FILE)))
    return heads.to(device=param.device, dtype=param.dtype).eval()
