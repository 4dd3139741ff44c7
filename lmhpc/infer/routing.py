"""Mixture-of-Experts layers at inference: every token reaches its experts.

Training caps each expert at ``capacity_factor × tokens × k / experts`` tokens and drops the rest, so a token's
output would depend on the other tokens of the batch (and on how many come per forward: a whole prompt, or
one per decoding step). At inference nothing is dropped: :func:`no_token_dropping` lifts the cap for the
duration of a block, and leaves the layers' routing statistics as training left them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from lmhpc.model.moe import MoE

_STAT_BUFFERS = ("tokens_per_expert", "dropped_tokens", "aux_losses", "aux_count")


@contextmanager
def no_token_dropping(model: nn.Module) -> Iterator[None]:
    """Inside the block, the MoE layers of ``model`` keep every token (no capacity limit), and what they
    count (load, dropped tokens, auxiliary losses) is restored on leaving."""
    layers = [m for m in model.modules() if isinstance(m, MoE)]
    saved = [(m.args, {name: getattr(m, name).clone() for name in _STAT_BUFFERS}) for m in layers]
    try:
        for m in layers:
            m.args = dataclasses.replace(m.args, capacity_factor=0.0)
        yield
    finally:
        for m, (args, stats) in zip(layers, saved):
            m.args = args
            for name, value in stats.items():
                getattr(m, name).copy_(value)
