"""Consolidated checkpoints: one folder that loads in one process, with no torch.distributed and no pickle.

``model.safetensors`` (our parameter names; a tied output projection is not stored), ``model_args.json``
(:class:`~lmhpc.model.args.ModelArgs`), the tokenizer files (``tokenizer.model`` and/or ``tokenizer.json``
with their configs) and ``source.json`` (what it was made from). safetensors holds raw tensors only, so
loading one runs nothing out of the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmhpc.exchange.weights import (
    ModelWeights,
    args_from_dict,
    args_to_dict,
    output_folder,
    read_tokenizer_files,
    write_tokenizer_files,
)

WEIGHTS = "model.safetensors"
ARGS = "model_args.json"
SOURCE = "source.json"


def is_consolidated(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / ARGS).is_file()


def write_consolidated(weights: ModelWeights, out: Path, dtype: torch.dtype | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``weights`` as a consolidated folder ``out`` (atomically); ``dtype`` converts floating tensors."""
    from safetensors.torch import save_file

    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in weights.state.items()}
    with output_folder(out, overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / ARGS).write_text(json.dumps(args_to_dict(weights.args), indent=2, sort_keys=True) + "\n")
        write_tokenizer_files(weights.tokenizer_files, tmp)
        source = {**weights.metadata, "source": str(weights.source) if weights.source else None}
        (tmp / SOURCE).write_text(json.dumps(source, indent=2, sort_keys=True, default=str) + "\n")
    return Path(out)


def read_consolidated(folder: Path) -> ModelWeights:
    """A consolidated folder's weights (safetensors only: nothing is unpickled)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_consolidated(folder):
        raise FileNotFoundError(f"{folder} is not a consolidated checkpoint (needs {WEIGHTS} and {ARGS})")
    args = args_from_dict(json.loads((folder / ARGS).read_text()), str(folder / ARGS))
    state = load_file(str(folder / WEIGHTS))
    source = json.loads((folder / SOURCE).read_text()) if (folder / SOURCE).is_file() else {}
    return ModelWeights(state, args, read_tokenizer_files(folder), folder, {**source, "format": "consolidated"})
