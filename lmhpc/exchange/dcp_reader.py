"""Read the model out of a DCP step folder in one process, with no process group and no unpickling of code.

DCP (``torch.distributed.checkpoint``) stores each rank's shards and a ``.metadata`` file that maps every
tensor to its chunks; loading with an empty state dict and no process group rebuilds whole tensors whatever
parallel layout wrote them (FSDP shards, tensor-parallel slices, pipeline stages, expert-parallel experts
are all saved under the model's global parameter names, see :mod:`lmhpc.train.checkpoint`).

Two guards keep this from running code out of the folder: ``.metadata`` (a pickle) is read by an unpickler
that only builds DCP's own metadata classes, torch sizes and dtypes; tensors and any non-tensor values are
read with ``torch.load(weights_only=True)``. Only the ``model`` entries are read (not the optimizer state).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

MODEL_KEY = "model"

_ALLOWED_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The DCP metadata refers to something other than DCP's metadata classes."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                          torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(f"DCP metadata refers to {module}.{name}, which a checkpoint's metadata never "
                                    "holds; refusing to load it")


def read_metadata(step_dir: Path) -> Metadata:
    """The DCP ``.metadata`` of a step folder, unpickled with the allow-list above."""
    with open(Path(step_dir) / ".metadata", "rb") as fh:
        metadata = _MetadataUnpickler(fh).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{step_dir}/.metadata does not hold DCP metadata")
    return metadata


class _SafeReader(FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(Path(self.path))
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyPlanner(_EmptyStateDictLoadPlanner):
    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        raise UnsafeCheckpointError(f"{read_item.dest_index.fqn} is not a tensor; a model holds tensors only")


def model_tensor_shapes(step_dir: Path) -> dict[str, tuple[int, ...]]:
    """Name → shape of every model tensor in the checkpoint (from the metadata alone)."""
    prefix = MODEL_KEY + "."
    return {k[len(prefix):]: tuple(v.size) for k, v in read_metadata(step_dir).state_dict_metadata.items()
            if k.startswith(prefix) and hasattr(v, "size")}


def read_model_state(step_dir: Path) -> dict[str, torch.Tensor]:
    """The whole model's tensors of a DCP step folder, by parameter name (CPU, the dtype they were saved in)."""
    step_dir = Path(step_dir)
    if not (step_dir / ".metadata").is_file():
        raise FileNotFoundError(f"{step_dir} is not a DCP checkpoint folder (no .metadata)")
    read_metadata(step_dir)  # refused here, with its own error, rather than inside DCP's collective wrapper
    loaded: dict[str, Any] = {}
    _load_state_dict(loaded, storage_reader=_SafeReader(step_dir), planner=_WeightsOnlyPlanner(keys={MODEL_KEY}),
                     no_dist=True)
    model = loaded.get(MODEL_KEY)
    if not model:
        raise ValueError(f"{step_dir} holds no '{MODEL_KEY}' entries (not a pretrain checkpoint?)")
    return {name: t for name, t in model.items() if isinstance(t, torch.Tensor)}
