"""What the preference stages share: their data files, the data's quarantine, fingerprints of data and model,
and the stored reference log-probs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.exchange.weights import ModelWeights
from lmhpc.fsutil import atomic_path, write_json
from lmhpc.preference.config import AI_FEEDBACK, AI_FEEDBACK_PAIRS, data_files
from lmhpc.preference.data import PreferenceData, load_pairs

QUARANTINE_FILE = "quarantine/pairs.jsonl"
REFERENCE_LOGPS = "logps.npz"
REFERENCE_META = "reference.json"


def preference_files(ctx: StageContext, entries: list[str], section: str) -> list[Path]:
    """The configured files of ``<section>.data``, then the ai_feedback stage's pairs when this stage reads it."""
    files = data_files(entries, ctx.cfg, f"{section}.data")
    if AI_FEEDBACK in ctx.inputs:
        files.append(ctx.stage_output(AI_FEEDBACK) / AI_FEEDBACK_PAIRS)
    return files


def read_preference_data(ctx: StageContext, files: list[Path], tokenizer: TextTokenizer, max_len: int,
                         rank: int) -> PreferenceData:
    """Every rank reads and tokenizes the same pairs; rank 0 alone writes the quarantine
    (``<stage>/quarantine/pairs.jsonl``, bad records with their reason)."""
    quarantine = Quarantine(ctx.stage_dir / QUARANTINE_FILE) if rank == 0 else _CountOnly(ctx.stage_dir / "unused")
    with quarantine:
        data = load_pairs(files, tokenizer, max_len, quarantine)
    if not data.pairs:
        raise ValueError(f"{ctx.stage}: no usable preference pair in {[str(f) for f in files]} (quarantined by "
                         f"reason: {data.quarantined})")
    return data


class _CountOnly(Quarantine):
    """The other ranks count the same bad records without writing them a second time."""

    def add(self, reason: str, location: str, raw: bytes | str | None = None, detail: str = "", **kwargs: Any
            ) -> None:
        self.counts[reason] += 1


def weights_fingerprint(weights: ModelWeights) -> str:
    """sha256 over a model's parameters (names, shapes, dtypes and bytes, in name order)."""
    h = hashlib.sha256()
    for name in sorted(weights.state):
        t = weights.state[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ReferenceLogps:
    """The reference model's summed response log-probs and token counts, indexed by pair index."""

    chosen: np.ndarray  # float32 (N,)
    rejected: np.ndarray
    chosen_tokens: np.ndarray  # int64 (N,)
    rejected_tokens: np.ndarray
    meta: dict[str, Any]

    def for_pairs(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.chosen[index]), torch.from_numpy(self.rejected[index])


def write_reference(folder: Path, ref: ReferenceLogps) -> None:
    """``logps.npz`` and ``reference.json`` (fingerprints of data and model, counts), each atomically."""
    with atomic_path(folder / REFERENCE_LOGPS) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, chosen=ref.chosen, rejected=ref.rejected, chosen_tokens=ref.chosen_tokens,
                     rejected_tokens=ref.rejected_tokens)
    write_json(folder / REFERENCE_META, ref.meta)


def read_reference(folder: Path) -> ReferenceLogps:
    with np.load(folder / REFERENCE_LOGPS) as z:
        arrays = {k: z[k] for k in ("chosen", "rejected", "chosen_tokens", "rejected_tokens")}
    return ReferenceLogps(**arrays, meta=json.loads((folder / REFERENCE_META).read_text()))


def check_reference(ref: ReferenceLogps, data: PreferenceData, model_fingerprint: str, where: Path) -> None:
    """Refuse reference log-probs of other data or another model than this stage's."""
    problems = []
    if ref.meta.get("data_fingerprint") != data.fingerprint():
        problems.append(f"data: {ref.meta.get('pairs')} pairs fingerprinted {ref.meta.get('data_fingerprint')}, "
                        f"this stage has {len(data.pairs)} pairs fingerprinted {data.fingerprint()}")
    if ref.meta.get("model_fingerprint") != model_fingerprint:
        problems.append(f"model: {ref.meta.get('model_source')} ({ref.meta.get('model_fingerprint')}), this stage "
                        f"starts from {model_fingerprint}")
    if problems:
        raise ValueError(f"the reference log-probs in {where} were computed for other inputs ("
                         + "; ".join(problems) + "): rerun the reference stage (lmhpc stage reference CONFIG)")
    n = len(data.pairs)
    if not (len(ref.chosen) == len(ref.rejected) == n):
        raise ValueError(f"{where}: {len(ref.chosen)} reference log-probs for {n} pairs")
