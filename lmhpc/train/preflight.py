"""Checks of the pretrain stage before anything is submitted (beyond the config's own validation)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def preflight(cfg: RunConfig) -> list[str]:
    """The Megatron-Core backend: megatron-core installed; a run executed on this machine (local executor)
    needs a CUDA GPU here, and Transformer Engine when ``megatron.spec`` or FP8 asks for it; starting weights
    must be convertible. Each problem names its key."""
    p = cfg.pretrain
    if p.backend != "megatron":
        return []
    problems: list[str] = []
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        problems.append("pretrain.backend: megatron-core is not installed (pip install megatron-core, or run in "
                        "the NeMo/PyTorch container of env/)")
    if cfg.executor.kind == "local":
        import torch

        from lmhpc.train.megatron.translate import te_available

        if not torch.cuda.is_available():
            problems.append("pretrain.backend: megatron runs on CUDA GPUs only and this run executes here "
                            "(executor.kind=local), where CUDA is not available; use pretrain.backend=native or "
                            "a SLURM executor with GPUs")
        elif (p.megatron.spec == "te" or p.train.fp8) and not te_available():
            key = "pretrain.megatron.spec" if p.megatron.spec == "te" else "pretrain.train.fp8"
            problems.append(f"{key}: needs Transformer Engine, which does not import here")
    if p.init_from and cfg.path(p.init_from).exists():
        from lmhpc.exchange.hf import UnsupportedModel
        from lmhpc.exchange.load import read_weights
        from lmhpc.exchange.megatron import check_convertible

        try:
            check_convertible(read_weights(cfg.path(p.init_from)).args)
        except UnsupportedModel as err:
            problems.append(f"pretrain.init_from: {err}")
    return problems
