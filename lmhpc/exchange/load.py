"""``load_model(path)``: any model this project can read, as our :class:`Transformer` and its tokenizer.

Accepted: a pretrain stage folder (its newest complete checkpoint) or its ``checkpoints/`` folder, a DCP
step folder, a consolidated folder (:mod:`lmhpc.exchange.consolidated`), a Hugging Face Llama folder
(:mod:`lmhpc.exchange.hf`), a ``.gguf`` file (:mod:`lmhpc.exchange.gguf_import`) and, in :func:`load_model`, a
packed quantized model (:mod:`lmhpc.quantize.packed`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lmhpc.exchange.tokenizer import TextTokenizer, load_tokenizer
from lmhpc.exchange.weights import ModelWeights, write_tokenizer_files
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer


@dataclass
class LoadedModel:
    """A model ready to run: ``model`` in eval mode, its shape, its tokenizer, and where it came from."""

    model: Transformer
    args: ModelArgs
    tokenizer: TextTokenizer
    source: Path


def read_weights(path: str | Path) -> ModelWeights:
    """The weights at ``path``, whatever the format (see the module docstring)."""
    from lmhpc.exchange import consolidated, hf, pretrain_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".gguf":
            from lmhpc.exchange.gguf_import import read_gguf

            return read_gguf(path)
        raise ValueError(f"{path}: a model file must be a .gguf (folders: consolidated, Hugging Face, checkpoints)")
    if consolidated.is_consolidated(path):
        return consolidated.read_consolidated(path)
    if pretrain_checkpoint.is_step_folder(path):
        return pretrain_checkpoint.read_step(path)
    if pretrain_checkpoint.is_stage_folder(path):
        return pretrain_checkpoint.read_step(pretrain_checkpoint.newest_step_folder(path))
    if hf.is_hf_folder(path):
        return hf.read_hf(path)
    raise ValueError(f"{path} is none of: a pretrain stage folder (with checkpoints/), a DCP step folder "
                     f"(.metadata), a consolidated folder ({consolidated.WEIGHTS} + {consolidated.ARGS}), a Hugging "
                     f"Face folder ({hf.CONFIG} + *.safetensors) or a .gguf file")


def load_state_into(model: Transformer, weights: ModelWeights) -> None:
    """Copy ``weights`` into ``model``: every parameter present, none extra (a tied output is the embedding)."""
    tied = model.args.tie_embeddings
    state = {k: v for k, v in weights.state.items() if not (tied and k == "output.weight")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "output.weight")]
    if missing or unexpected:
        raise ValueError(f"weights from {weights.source} do not fit the model: missing {sorted(missing)[:8]}, "
                         f"unexpected {sorted(unexpected)[:8]}")


def build_model(weights: ModelWeights) -> Transformer:
    """Our Transformer holding ``weights`` exactly."""
    model = Transformer(weights.args)
    load_state_into(model, weights)
    return model


def weights_tokenizer(weights: ModelWeights) -> TextTokenizer:
    """The tokenizer of ``weights`` (loaded from its files; they are kept in memory, not on disk)."""
    if not weights.tokenizer_files:
        raise FileNotFoundError(f"no tokenizer comes with {weights.source}: a model folder needs tokenizer.model or "
                                "tokenizer.json (a pretrain checkpoint finds it in the run's tokenizer/ folder)")
    with tempfile.TemporaryDirectory(prefix="lmhpc-tokenizer-") as tmp:
        write_tokenizer_files(weights.tokenizer_files, Path(tmp))
        return load_tokenizer(tmp)


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               tokenizer: str | Path | None = None) -> LoadedModel:
    """The model at ``path`` (any format :func:`read_weights` reads) on ``device`` in ``dtype``, in eval mode.
    ``tokenizer``: a folder or file to take the tokenizer from instead of the model's own. A packed quantized
    model (:mod:`lmhpc.quantize.packed`) keeps its quantized layers (codes dequantized on the fly)."""
    from lmhpc.quantize.packed import is_packed, load_folder

    if is_packed(path):
        return load_folder(path, device=device, dtype=dtype, tokenizer=tokenizer)
    weights = read_weights(path)
    model = build_model(weights).to(device=device)
    for param in model.parameters():  # parameters only: the rotary tables stay in float32
        param.data = param.data.to(dtype)
    model.eval()
    text_tokenizer = load_tokenizer(tokenizer) if tokenizer is not None else weights_tokenizer(weights)
    return LoadedModel(model, weights.args, text_tokenizer, Path(path))
