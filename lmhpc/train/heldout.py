"""Held-out perplexity while pretraining: every ``pretrain.eval.interval`` steps, the model's mean token loss on
a small slice of text it never trains on.

The texts (jsonl, parquet or ``.txt`` files) are tokenized once with the run's sentencepiece model, each
document followed by the end-of-document token, concatenated and cut into sequences of ``seq_len + 1`` tokens
(at most ``max_tokens`` in all). Every data-parallel rank scores its own share of the same number of
sequences; the ranks then sum losses and token counts, so the figure does not depend on the layout.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.readers import read_documents


def heldout_sequences(paths: list[str], resolve: Callable[[str], Path], tokenizer_model: Path, eod: int,
                      seq_len: int, max_tokens: int, quarantine_path: Path) -> torch.Tensor:
    """(N, seq_len + 1) token ids from the texts; ``ValueError`` if they do not fill one sequence."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    ids: list[int] = []
    with Quarantine(quarantine_path) as quarantine:
        for pattern in paths:
            files = sorted(glob.glob(str(resolve(pattern)), recursive=True))
            if not files:
                raise FileNotFoundError(f"pretrain.eval.texts: no file matches {resolve(pattern)}")
            for name in files:
                path = Path(name)
                texts = [path.read_text(encoding="utf-8")] if path.suffix == ".txt" else \
                    (d.text for d in read_documents(path, InputSpec(path=name), quarantine))
                for text in texts:
                    ids += sp.encode(text) + [eod]
                    if len(ids) >= max_tokens:
                        break
    n = min(len(ids), max_tokens) // (seq_len + 1)
    if n == 0:
        raise ValueError(f"pretrain.eval.texts hold {len(ids)} tokens: not one sequence of {seq_len + 1}")
    return torch.tensor(ids[:n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


class HeldOutEval:
    """Mean token loss of the model on the held-out sequences (data parallel; no pipeline or context parallel)."""

    def __init__(self, sequences: torch.Tensor, dp: int, dp_rank: int, micro_batch_size: int, counts: bool,
                 device: torch.device) -> None:
        per_rank = len(sequences) // dp
        if per_rank == 0:
            raise ValueError(f"{len(sequences)} held-out sequences cannot be shared by {dp} data-parallel ranks")
        self.rows = sequences[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        self.micro_batch_size = micro_batch_size
        self.counts = counts  # one rank of each tensor-parallel group adds its loss
        self.device = device
        self.tokens = per_rank * dp * (sequences.shape[1] - 1)

    @torch.no_grad()
    def loss(self, model: torch.nn.Module, autocast) -> float:
        """Mean token loss over every rank's sequences; every rank returns the same figure."""
        was_training = model.training
        model.eval()
        nll = torch.zeros((), dtype=torch.float64)
        for start in range(0, len(self.rows), self.micro_batch_size):
            batch = self.rows[start:start + self.micro_batch_size].to(self.device)
            with autocast():
                logits = model(batch[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
            nll += loss.double().cpu()
        model.train(was_training)
        total = nll if self.counts else torch.zeros_like(nll)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(total)
        return float(total) / self.tokens

    @staticmethod
    def record(step: int, loss: float) -> dict[str, float]:
        return {"step": step, "loss": loss, "perplexity": math.exp(min(loss, 700.0))}
