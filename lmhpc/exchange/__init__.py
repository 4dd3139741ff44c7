"""Model exchange: consolidated checkpoints, Hugging Face and GGUF export and import, tokenizers.

``load_model(path)`` (:mod:`lmhpc.exchange.load`) reads any of them into our model; the names are imported
lazily so that ``lmhpc.exchange.tokenizer`` stays importable without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "load_model", "read_weights"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lmhpc.exchange import load

        return getattr(load, name)
    raise AttributeError(f"module 'lmhpc.exchange' has no attribute {name!r}")
