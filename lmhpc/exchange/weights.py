"""A model in memory between formats: its tensors under our parameter names, its shape, its tokenizer files.

Every reader (a DCP step folder, a consolidated folder, a Hugging Face folder, a GGUF file) returns
:class:`ModelWeights`, and every writer takes one, so each format is converted to and from one layout only.
Parameter names are those of :class:`lmhpc.model.transformer.Transformer`; a tied output projection is not
stored (it is the embedding).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmhpc.model.args import ModelArgs

# the files a model folder may carry for its tokenizer (see lmhpc.exchange.tokenizer)
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class ModelWeights:
    """A model's parameters (our names), its :class:`ModelArgs` and its tokenizer files (name → bytes)."""

    state: dict[str, torch.Tensor]
    args: ModelArgs
    tokenizer_files: dict[str, bytes] = field(default_factory=dict)
    source: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # where it came from (step, format, ...)


def args_to_dict(args: ModelArgs) -> dict[str, Any]:
    """Plain data for ``model_args.json``."""
    from lmhpc.config import to_dict

    return to_dict(args, redact=False)


def args_from_dict(data: dict[str, Any], where: str = "model_args") -> ModelArgs:
    """:class:`ModelArgs` from plain data; an unknown key or a wrong type raises ``ConfigError`` naming it."""
    from lmhpc.config import build

    return build(ModelArgs, data, where)


def read_tokenizer_files(folder: Path) -> dict[str, bytes]:
    """The tokenizer files present in ``folder``."""
    return {name: (folder / name).read_bytes() for name in TOKENIZER_FILES if (folder / name).is_file()}


def write_tokenizer_files(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        (folder / name).write_bytes(data)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A whole (unsharded) model's parameters as :class:`ModelWeights` stores them: detached, a tied output
    projection left out."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    if getattr(model, "args", None) is not None and model.args.tie_embeddings:
        state.pop("output.weight", None)
    return state


@contextmanager
def output_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block succeeds (removed when it fails).
    An existing non-empty ``out`` is refused unless ``overwrite``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
