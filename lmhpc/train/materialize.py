"""Models that no single rank could hold: built on the ``meta`` device, parallelised, then materialised.

:func:`meta_model` builds the :class:`~lmhpc.model.transformer.Transformer` with its parameters on
``meta`` (no memory; buffers such as the rotary tables stay real). Pipeline cuts, tensor/expert
parallel and FSDP2 then shard meta tensors, and :func:`materialize` allocates each rank's shards only
(``to_empty``) and fills them: :func:`~lmhpc.model.transformer.init_transformer` draws each unit's
whole tensors on the CPU from generators keyed by the seed and the global parameter name, and keeps
this rank's part, so the values equal those of the whole model built in one process, whatever the
layout. Peak host memory is one shard plus the largest single unit (an embedding, one linear layer,
one MoE layer's experts), not the model.

Starting from existing weights (``pretrain.init_from``) copies each parameter's part of the stored
tensor instead of drawing it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer, canonical_name, write_full

log = logging.getLogger(__name__)


@contextlib.contextmanager
def meta_parameters() -> Iterator[None]:
    """Within the block, every parameter a module registers moves to ``meta`` (buffers stay real).

    A module's constructor allocates its weight with ``torch.empty`` (untouched pages) before
    registering it; the meta copy replaces it at once, and its default initialisation then runs on meta."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def meta_model(args: ModelArgs) -> Transformer:
    """The model with meta parameters (not initialised) and real buffers."""
    with meta_parameters():
        return Transformer(args)


def is_meta(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def materialize(model: nn.Module, device: torch.device, seed: int, weights=None) -> None:
    """Allocate ``model``'s (possibly sharded) meta parameters on ``device`` and initialise them: from
    ``seed`` as :meth:`Transformer.init_weights` does, or with ``weights`` (a
    :class:`~lmhpc.exchange.weights.ModelWeights` of the same shape) when given.

    ``model`` is a Transformer or pipeline stage after parallelisation (FSDP2, TP, EP wrap it in place)."""
    buffers = {name: b for name, b in model.named_buffers() if not b.is_meta}
    slots: dict[int, list[tuple[nn.Module, str]]] = {}  # a tied parameter has several slots
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                slots.setdefault(id(param), []).append((module, name))
    model.to_empty(device=device)
    for places in slots.values():  # to_empty replaces each slot on its own: tie them again
        first, name = places[0]
        for module, other in places[1:]:
            module._parameters[other] = first._parameters[name]
    with torch.no_grad():
        for name, buf in buffers.items():
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[leaf] = buf.to(device)
        if weights is None:
            model.init_weights(seed)
        else:
            load_parts(model, weights)


def load_parts(model: nn.Module, weights) -> None:
    """Each parameter of ``model`` (whole or a DTensor shard) takes its part of ``weights.state``."""
    state = weights.state
    tied = model.args.tie_embeddings
    seen = set()
    for name, param in model.named_parameters():
        key = canonical_name(name)
        if tied and key == "output.weight":
            key = "tok_embeddings.weight"
        if key not in state:
            raise ValueError(f"weights from {weights.source} have no {key} for this model")
        full = state[key]
        if tuple(full.shape) != tuple(param.shape):
            raise ValueError(f"weights from {weights.source}: {key} has shape {tuple(full.shape)}, the model "
                             f"{tuple(param.shape)}")
        write_full(param, full.to(device="cpu", dtype=param.dtype))
        seen.add(key)
    log.info("initialised %d parameters from %s", len(seen), weights.source)


def read_start_weights(path: Path, args: ModelArgs):
    """The weights at ``path`` (``pretrain.init_from``), refused if their shape is not ``args``' shape."""
    from lmhpc.exchange.initialise import shape_of
    from lmhpc.exchange.load import read_weights

    weights = read_weights(path)
    ours, theirs = shape_of(args), shape_of(weights.args)
    differences = [f"model.{k}: {theirs.get(k)} in {path}, {ours.get(k)} in this run"
                   for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differences:
        raise ValueError("pretrain.init_from: the model to start from has another shape: " + "; ".join(differences))
    return weights
