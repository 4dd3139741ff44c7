"""LoRA by hand on our plain modules: adapters live beside the model, never inside it.

:func:`apply_lora` freezes the model and hooks each target ``nn.Linear``: its output gains
``(alpha / rank) · B A dropout(x)``. The adapters form one module of their own (:class:`LoRAAdapters`), so the
model's parameter names never change: checkpoints of the model stay plain (``lmhpc.exchange`` opens them) and
FSDP2 shards the frozen base weights as for full fine-tuning, while the small adapters stay whole on every rank
(their gradients are averaged by the trainer). :func:`merged_weights` adds ``B A`` into the base weights for a
save and puts them back exactly afterwards; :func:`merge_lora` merges for good and removes the hooks.

Initialisation and scaling follow ``peft``'s defaults: ``A`` Kaiming-uniform (a = √5), ``B`` zeros,
scale ``alpha / rank``.

QLoRA (``lora.base: nf4``): the trainer first swaps the block linears for frozen
:class:`~lmhpc.quantize.qlinear.NF4Linear` layers (:func:`~lmhpc.quantize.qlinear.nf4_base`), which hold 4-bit
codes and no float weight; adapters hook them like ``nn.Linear`` targets. For a save, :func:`merged_weights` puts
a plain ``nn.Linear`` in each NF4 layer's place for the duration, holding its dequantized weight (plus
``scale · B A`` for a target), so the state dict holds ``<name>.weight`` as for a float model and the NF4 codes
are never written or changed; :func:`merge_lora` makes that swap for good.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from lmhpc.align.config import LoRAConfig
from lmhpc.quantize.qlinear import NF4Linear

LINEAR_TYPES = (nn.Linear, NF4Linear)  # what adapters attach to


def _key(name: str) -> str:
    return name.replace(".", "-")


class LoRAAdapter(nn.Module):
    """``A`` (rank × in) and ``B`` (out × rank) of one linear layer."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x).to(self.A.dtype)
        return (x @ self.A.t() @ self.B.t()) * self.scale

    def delta(self) -> torch.Tensor:
        """``scale · B A``: what merging adds to the base weight (out × in)."""
        return (self.B @ self.A) * self.scale


class LoRAAdapters(nn.Module):
    """Every adapter of a model, keyed by the target's name (dots as dashes), with the hooks that apply them."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.targets: dict[str, nn.Module] = {}  # plain dicts: the model's modules are not ours to register
        # every NF4Linear of the model (targets or not): name -> (parent module, attribute name, the layer)
        self.nf4: dict[str, tuple[nn.Module, str, NF4Linear]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, name: str, linear: nn.Module, cfg: LoRAConfig) -> None:
        adapter = LoRAAdapter(linear.in_features, linear.out_features, cfg.rank, cfg.alpha, cfg.dropout)
        self.adapters[_key(name)] = adapter
        self.targets[name] = linear

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            return output + adapter(inputs[0]).to(output.dtype)

        self._hooks.append(linear.register_forward_hook(hook))

    def adapter(self, name: str) -> LoRAAdapter:
        return self.adapters[_key(name)]

    def detach_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()


def apply_lora(model: nn.Module, cfg: LoRAConfig, generator_seed: int | None = None) -> LoRAAdapters:
    """Freeze ``model`` and attach adapters to every ``nn.Linear`` or ``NF4Linear`` whose last name is in
    ``cfg.targets`` (before any parallel wrapping). ``generator_seed``: the seed of the ``A`` initialisation
    (default: the global generator; the draws do not depend on whether the base is NF4)."""
    adapters = LoRAAdapters()
    for param in model.parameters():
        param.requires_grad_(False)
    for name, m in model.named_modules():
        if isinstance(m, NF4Linear):
            parent_name, _, child = name.rpartition(".")
            adapters.nf4[name] = (model.get_submodule(parent_name) if parent_name else model, child, m)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, LINEAR_TYPES) and name.split(".")[-1] in cfg.targets]
    if not targets:
        raise ValueError(f"LoRA: no linear layer of the model is named one of {cfg.targets}")
    rng = contextlib.nullcontext() if generator_seed is None else torch.random.fork_rng(devices=[])
    with rng:
        if generator_seed is not None:
            torch.manual_seed(generator_seed)
        for name, linear in targets:
            adapters.attach(name, linear, cfg)
    adapters.to(device=_device(targets[0][1]))
    return adapters


def _device(module: nn.Module) -> torch.device:
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def _local_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``delta`` laid out like ``weight`` (the same shards when ``weight`` is an FSDP2 DTensor)."""
    if hasattr(weight, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(delta.to(weight.dtype), weight.device_mesh, weight.placements, src_data_rank=None)
    return delta.to(weight.dtype)


def _plain_linear(layer: NF4Linear, delta: torch.Tensor | None) -> nn.Linear:
    """A frozen float ``nn.Linear`` holding ``layer``'s dequantized weight (+ ``delta``): what it stands for."""
    weight = layer.dequantized()
    if delta is not None:
        weight = weight + delta.to(weight.dtype)
    linear = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    return linear


def _plain_layers(adapters: LoRAAdapters) -> dict[str, nn.Linear]:
    """For every NF4 layer: its plain stand-in, ``dequantize_nf4(codes) + scale · B A`` for a target."""
    with torch.no_grad():
        return {name: _plain_linear(layer, adapters.adapter(name).delta().detach() if name in adapters.targets
                                    else None)
                for name, (_, _, layer) in adapters.nf4.items()}


@contextlib.contextmanager
def merged_weights(adapters: LoRAAdapters) -> Iterator[None]:
    """Inside: every float target's weight is ``W + scale · B A`` and every NF4 layer is replaced by a plain
    ``nn.Linear`` (its dequantized weight, plus ``scale · B A`` for a target) under the same name, so a state
    dict of the model is that of a plain float model; after: exactly as before (float weights restored from a
    copy, the NF4 layers with their untouched codes put back)."""
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    swapped: list[tuple[nn.Module, str, NF4Linear]] = []
    with torch.no_grad():
        try:
            for name, linear in adapters.targets.items():
                if isinstance(linear, NF4Linear):
                    continue
                weight = linear.weight
                saved.append((weight, weight.detach().clone()))
                weight.add_(_local_delta(weight, adapters.adapter(name).delta().detach()))
            for name, plain in _plain_layers(adapters).items():
                parent, child, layer = adapters.nf4[name]
                setattr(parent, child, plain)
                swapped.append((parent, child, layer))
            yield
        finally:
            for parent, child, layer in swapped:
                setattr(parent, child, layer)
            for weight, copy in saved:
                weight.copy_(copy)


def merge_lora(adapters: LoRAAdapters) -> None:
    """Add every adapter into its base weight for good and remove the hooks (the model is plain again: NF4
    layers become float ``nn.Linear`` layers holding their dequantized weight plus the adapter's delta)."""
    with torch.no_grad():
        for name, linear in adapters.targets.items():
            if not isinstance(linear, NF4Linear):
                linear.weight.add_(_local_delta(linear.weight, adapters.adapter(name).delta().detach()))
        for name, plain in _plain_layers(adapters).items():
            parent, child, _ = adapters.nf4[name]
            setattr(parent, child, plain)
    adapters.detach_hooks()
    adapters.nf4.clear()
