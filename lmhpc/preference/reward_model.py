"""The Bradley-Terry reward model: the policy's architecture with a scalar head, and its saved form.

:class:`RewardModel` is our :class:`~lmhpc.model.transformer.Transformer` without its output projection
(``backbone``, which then returns the final-norm hidden states) and ``score = Linear(dim, 1, bias=False)`` read on
the last real token of each row: the layout of Hugging Face's ``LlamaForSequenceClassification`` with one label,
which TRL's ``RewardTrainer`` trains.

Saved folder (:func:`save_reward_model`, read by :func:`load_reward_model`)::

    reward_model.safetensors   backbone.* and score.weight (no pickle)
    model_args.json            the backbone's ModelArgs
    reward_model.json          {"format": "lmhpc-reward-model", "version": 1, "pooling": "last_token", ...}
    tokenizer files            as the policy's (tokenizer.model / tokenizer.json + configs)

Use from another stage (PPO)::

    from lmhpc.preference.reward_model import load_reward_model
    rm = load_reward_model(run_dir / "reward")           # the reward stage folder, or its reward_model/ folder
    scores = rm.score(tokens, lengths)                   # tokens (B, T) right-padded ids, lengths (B,) -> (B,)

``tokens`` are the prompt (chat template with generation prompt) followed by the response and its end token,
as :mod:`lmhpc.preference.data` writes them; ``lengths`` counts the real tokens of each row (padding after them is
never read). ``score`` runs without gradients in the model's dtype; call the module itself to train it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.exchange.weights import (
    ModelWeights,
    args_from_dict,
    args_to_dict,
    output_folder,
    read_tokenizer_files,
    write_tokenizer_files,
)
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer

FORMAT = "lmhpc-reward-model"
WEIGHTS = "reward_model.safetensors"
ARGS = "model_args.json"
META = "reward_model.json"
FOLDER = "reward_model"  # inside the reward stage's folder


class RewardModel(nn.Module):
    """Token ids (B, T) and real lengths (B,) → one scalar reward per row (B,)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.backbone = Transformer(args)
        self.backbone.output = None  # hidden states (after the final norm) come out instead of logits
        self.score_head = nn.Linear(args.dim, 1, bias=False)
        nn.init.normal_(self.score_head.weight, std=args.init_std)

    @classmethod
    def from_policy(cls, policy: Transformer, head_seed: int) -> RewardModel:
        """A reward model whose backbone holds ``policy``'s weights (its output layer is dropped) and whose
        head is drawn from ``head_seed``."""
        model = cls(policy.args)
        state = {k: v for k, v in policy.state_dict().items() if not k.startswith("output.")}
        missing, unexpected = model.backbone.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"policy weights do not fit the reward backbone: missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]}")
        g = torch.Generator().manual_seed(head_seed)
        with torch.no_grad():
            model.score_head.weight.copy_(torch.randn(model.score_head.weight.shape, generator=g)
                                          * policy.args.init_std)
        return model

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(tokens)  # (B, T, dim)
        last = (lengths.to(hidden.device) - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.score_head(pooled).squeeze(-1).float()

    @torch.no_grad()
    def score(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Rewards of right-padded rows (no gradient): (B,) float32."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(tokens, lengths)
        finally:
            self.train(was_training)


def save_reward_model(model: RewardModel, out: Path, tokenizer_files: dict[str, bytes],
                      metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (whole, unsharded) as a reward-model folder ``out``, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith("backbone.rope_")}
    with output_folder(out, overwrite=True) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / ARGS).write_text(json.dumps(args_to_dict(model.args), indent=2, sort_keys=True) + "\n")
        write_tokenizer_files(tokenizer_files, tmp)
        meta = {"format": FORMAT, "version": 1, "pooling": "last_token", "head": "linear(dim, 1), no bias",
                **(metadata or {})}
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return Path(out)


def reward_model_folder(path: str | Path) -> Path:
    """The reward-model folder at ``path``: the folder itself, or a reward stage folder holding one."""
    path = Path(path)
    for candidate in (path, path / FOLDER):
        if (candidate / META).is_file() and (candidate / WEIGHTS).is_file():
            return candidate
    raise FileNotFoundError(f"{path} is not a reward model (needs {META} and {WEIGHTS}, or a {FOLDER}/ folder "
                            "holding them: the output of the reward stage)")


def load_reward_model(path: str | Path, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> RewardModel:
    """The reward model saved at ``path`` (see the module docstring), in eval mode on ``device``."""
    from safetensors.torch import load_file

    folder = reward_model_folder(path)
    meta = json.loads((folder / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder / META}: format {meta.get('format')!r}, expected {FORMAT!r}")
    args = args_from_dict(json.loads((folder / ARGS).read_text()), str(folder / ARGS))
    model = RewardModel(args)
    missing, unexpected = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
    if unexpected or [k for k in missing if not k.startswith("backbone.rope_")]:
        raise ValueError(f"{folder / WEIGHTS} does not fit the reward model: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}")
    for param in model.parameters():
        param.data = param.data.to(dtype)
    return model.to(device).eval()


def reward_model_tokenizer(path: str | Path) -> TextTokenizer:
    """The tokenizer saved with a reward model."""
    from lmhpc.exchange.load import weights_tokenizer

    folder = reward_model_folder(path)
    args = args_from_dict(json.loads((folder / ARGS).read_text()), str(folder / ARGS))
    return weights_tokenizer(ModelWeights({}, args, read_tokenizer_files(folder), folder))
