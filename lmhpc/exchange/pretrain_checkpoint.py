"""The pretrain stage's checkpoints as model weights: a stage folder's newest complete step, or one step folder.

A step folder (``checkpoints/step-N/``, see :mod:`lmhpc.train.checkpoint`) holds the DCP shards; its
``train_state.json`` names the model's shape (``model_args``) and the tokenizer the data was encoded with
(``tokenizer``). Folders written before those entries existed fall back to the stage's ``config.json``
(the vocabulary size from the embedding's shape) and the run's ``tokenizer/`` stage folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmhpc.exchange.dcp_reader import model_tensor_shapes, read_model_state
from lmhpc.exchange.weights import ModelWeights, args_from_dict, read_tokenizer_files
from lmhpc.fsutil import read_json
from lmhpc.model.args import ModelArgs
from lmhpc.train.checkpoint import COMPLETE_MARKER, TRAIN_STATE, latest_step, step_dir

CHECKPOINTS = "checkpoints"


def is_step_folder(path: Path) -> bool:
    return (path / ".metadata").is_file()


def is_stage_folder(path: Path) -> bool:
    """A pretrain stage folder (holding ``checkpoints/``) or its ``checkpoints/`` folder."""
    return (path / CHECKPOINTS).is_dir() or (path.name == CHECKPOINTS and path.is_dir())


def newest_step_folder(folder: Path) -> Path:
    """The newest complete step of a pretrain stage folder (or of its ``checkpoints/`` folder)."""
    checkpoints = folder if folder.name == CHECKPOINTS else folder / CHECKPOINTS
    step = latest_step(checkpoints)
    if step is None:
        raise FileNotFoundError(f"{checkpoints} holds no complete checkpoint (no step-N folder with {COMPLETE_MARKER})")
    return step_dir(checkpoints, step)


def step_model_args(step: Path) -> ModelArgs:
    """The model shape a step folder was trained with."""
    state = read_json(step / TRAIN_STATE, {}) or {}
    if "model_args" in state:
        return args_from_dict(state["model_args"], f"{step / TRAIN_STATE}:model_args")
    config = read_json(step.parent.parent / "config.json")
    if not config or "pretrain" not in config:
        raise FileNotFoundError(f"{step}: no model_args in {TRAIN_STATE} and no pretrain stage config.json two "
                                "folders up; the model's shape is unknown")
    args = args_from_dict(config["pretrain"]["model"], "config.json:pretrain.model")
    embedding = model_tensor_shapes(step).get("tok_embeddings.weight")
    if embedding is None:
        raise ValueError(f"{step} has no tok_embeddings.weight")
    return dataclasses.replace(args, vocab_size=embedding[0])


def step_tokenizer_folder(step: Path) -> Path | None:
    """The folder of the tokenizer a step folder's model was trained with, if it can be found."""
    state = read_json(step / TRAIN_STATE, {}) or {}
    candidates = [Path(state["tokenizer"]).parent] if state.get("tokenizer") else []
    candidates.append(step.parent.parent.parent / "tokenizer")  # <run>/pretrain/checkpoints/step-N → <run>/tokenizer
    return next((c for c in candidates if c.is_dir() and read_tokenizer_files(c)), None)


def read_step(step: Path) -> ModelWeights:
    """A step folder's model: whole tensors (one process, no process group), shape and tokenizer files."""
    step = Path(step)
    if not (step / COMPLETE_MARKER).exists():
        raise FileNotFoundError(f"{step} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
    args = step_model_args(step)
    state = read_model_state(step)
    if args.tie_embeddings:
        state.pop("output.weight", None)
    tokenizer = step_tokenizer_folder(step)
    files = read_tokenizer_files(tokenizer) if tokenizer else {}
    train_state = read_json(step / TRAIN_STATE, {}) or {}
    return ModelWeights(state, args, files, step, {"format": "dcp", "step": train_state.get("step")})
