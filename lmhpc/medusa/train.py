"""Training Medusa heads on a frozen model: token windows, AdamW, checkpoints that resume bit for bit.

Each step draws ``batch_size`` windows of ``seq_len + 1`` tokens at offsets taken from a generator seeded by
(seed, step), so a resumed run sees the same windows as an uninterrupted one. The model stays frozen (in
evaluation mode, no gradients); only the heads' parameters are optimised (:func:`lmhpc.medusa.heads.medusa_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmhpc.medusa.heads import MedusaHeads, medusa_loss
from lmhpc.model.transformer import Transformer


@dataclass
class TrainSettings:
    steps: int = 200
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 1e-3
    warmup: int = 10
    weight_decay: float = 0.0
    loss_decay: float = 0.8
    target: str = "distill"
    seed: int = 0


def windows(tokens: np.ndarray, settings: TrainSettings, step: int) -> torch.Tensor:
    """Step ``step``'s batch (batch_size, seq_len) of windows of the 1-D token array ``tokens``."""
    span = settings.seq_len
    if tokens.shape[0] < span + 1:
        raise ValueError(f"{tokens.shape[0]} training tokens; a window needs {span + 1}")
    rng = np.random.default_rng([settings.seed, step])
    starts = rng.integers(0, tokens.shape[0] - span, size=settings.batch_size)
    return torch.from_numpy(np.stack([tokens[s:s + span] for s in starts]).astype(np.int64))


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class HeadsTrainer:
    """Optimises ``heads`` on ``model`` (frozen) over ``tokens`` (a 1-D array of token ids)."""

    def __init__(self, model: Transformer, heads: MedusaHeads, tokens: np.ndarray, settings: TrainSettings) -> None:
        self.model, self.heads, self.tokens, self.settings = model.eval(), heads.train(), tokens, settings
        model.requires_grad_(False)
        self.optimizer = torch.optim.AdamW([p for p in heads.parameters() if p.requires_grad], lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.step = 0

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns its loss and each head's top-1 agreement with its target."""
        batch = windows(self.tokens, self.settings, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.settings, self.step)
        loss, agree = medusa_loss(self.model, self.heads, batch, self.settings.loss_decay, self.settings.target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), "lr": self.optimizer.param_groups[0]["lr"],
                **{f"head{k}_top1": a for k, a in enumerate(agree)}}

    def state_dict(self) -> dict:
        return {"step": self.step, "heads": self.heads.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save(self, folder: Path) -> Path:
        """A checkpoint ``folder/step_<N>.pt`` (written atomically)."""
        from lmhpc.fsutil import atomic_path

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:06d}.pt"
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    def resume(self, folder: Path) -> int:
        """Load the newest checkpoint in ``folder`` (if any); the step to continue from."""
        found = sorted(folder.glob("step_*.pt")) if folder.is_dir() else []
        if found:
            self.load_state_dict(torch.load(found[-1], map_location="cpu", weights_only=True))
        return self.step
