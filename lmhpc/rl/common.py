"""What the grpo and ppo stages share: their prompts (written to the stage folder, bad records quarantined),
prompt encoding, greedy accuracy, and the store of generation batches that makes a resume bitwise.

A generation batch (rollouts, rewards, old log-probs, ...) serves several optimizer steps (GRPO's
``num_iterations``, PPO's epochs and mini-batches). It is saved under ``<stage>/rollouts/`` when made, so a job
resumed in the middle of its steps uses the very batch the interrupted one used, sampled by the weights of that
time, instead of sampling again with later weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.fsutil import temp_file_beside
from lmhpc.model.transformer import Transformer
from lmhpc.rl.config import TaskConfig
from lmhpc.rl.rewards import exact_answer
from lmhpc.rl.rollout import sample
from lmhpc.rl.tasks import TASKS_FILE, check_records, generate, read_records

QUARANTINE_FILE = "quarantine/tasks.jsonl"
ROLLOUTS_DIR = "rollouts"
EVAL_SEED_SALT = 1_000_003  # evaluation records come from another stream than the training ones

T = TypeVar("T")


@dataclass
class Prompts:
    """The training records, the held-out evaluation records, and the account of what was read."""

    records: list[dict[str, Any]]
    eval_records: list[dict[str, Any]]
    docs_in: int
    quarantined: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {"docs_in": self.docs_in, "docs_out": len(self.records), "quarantined": sum(self.quarantined.values()),
                "quarantine_reasons": dict(self.quarantined), "dropped": {}, "task_files": self.files,
                "eval_records": len(self.eval_records)}


def encode_prompt(tokenizer: TextTokenizer, prompt: str, add_bos: bool) -> list[int]:
    ids = tokenizer.encode(prompt)
    if add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids = [tokenizer.bos_id, *ids]
    return ids


def prepare_prompts(ctx: StageContext, cfg: TaskConfig, tokenizer: TextTokenizer, max_tokens: int, seed: int,
                    rank: int) -> Prompts:
    """Generate and read the task records, keep the usable ones (rank 0 quarantines the others and writes
    ``tasks.jsonl``), and draw the evaluation records (generated, none of whose prompts is trained on)."""
    task_seed = cfg.seed if cfg.seed >= 0 else seed
    files = cfg.file_paths(ctx.cfg, f"{ctx.stage}.task")
    raw: list[dict[str, Any]] = []
    if cfg.num_records:
        raw += generate(cfg.kinds, cfg.num_records, task_seed, cfg.max_operand, cfg.list_length)
    counts: dict[str, int] = {}
    quarantine = Quarantine(ctx.stage_dir / QUARANTINE_FILE) if rank == 0 else None
    length = lambda text: len(encode_prompt(tokenizer, text, cfg.add_bos))  # noqa: E731
    try:
        for path in files:
            raw += list(read_records(path, quarantine, counts))
        docs_in = len(raw) + sum(counts.values())
        kept, bad = check_records(raw, quarantine, length, max_tokens)
    finally:
        if quarantine is not None:
            quarantine.close()
    for reason, n in bad.items():
        counts[reason] = counts.get(reason, 0) + n
    if not kept:
        raise ValueError(f"{ctx.stage}: no usable task record (quarantined by reason: {counts})")
    trained = {r["prompt"] for r in kept}
    eval_records = []
    if cfg.eval_records and cfg.kinds:
        pool = generate(cfg.kinds, cfg.eval_records * 4 + 16, task_seed + EVAL_SEED_SALT, cfg.max_operand,
                        cfg.list_length)
        eval_records = [r for r in pool if r["prompt"] not in trained and length(r["prompt"] + r["answer"])
                        <= max_tokens][:cfg.eval_records]
    if rank == 0:
        write_jsonl(ctx.stage_dir / TASKS_FILE, kept)
    return Prompts(kept, eval_records, docs_in, counts, [str(f) for f in files])


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def greedy_accuracy(model: torch.nn.Module, tokenizer: TextTokenizer, records: Sequence[dict[str, Any]],
                    max_new_tokens: int, add_bos: bool, batch_size: int = 64) -> float | None:
    """The share of ``records`` whose greedy completion is exactly the answer (None without records)."""
    if not records:
        return None
    prompts = [encode_prompt(tokenizer, r["prompt"], add_bos) for r in records]
    with torch.no_grad():
        rollout = sample(model, tokenizer, prompts, 1, max_new_tokens, temperature=0.0, seed=0,
                         batch_size=batch_size)
    scores = exact_answer([r["prompt"] for r in records], rollout.completion_texts, [r["answer"] for r in records])
    return sum(scores) / len(scores)


class RolloutPolicy:
    """The model rollouts sample from. On one rank, the policy itself; on several, its FSDP2 shards cannot run
    the generator (inference mode, each rank stopping after its own rows), so every rank keeps a whole copy,
    refreshed from the shards (LoRA merged in) before each generation batch: a collective all ranks join."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.copy: Transformer | None = None

    def current(self) -> torch.nn.Module:
        t = self.trainer
        if not t.sharded:
            return t.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from lmhpc.align.lora import merged_weights

        if self.copy is None:
            self.copy = Transformer(t.args).to(t.device).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)
        with merged_weights(t.lora) if t.lora is not None else contextlib.nullcontext():
            state = get_model_state_dict(t.model, options=StateDictOptions(full_state_dict=True))
        missing, unexpected = self.copy.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (t.args.tie_embeddings and k == "output.weight")]
        if missing or unexpected:
            raise RuntimeError(f"the rollout copy does not fit the policy: missing {missing[:6]}, "
                               f"unexpected {unexpected[:6]}")
        return self.copy


class GenerationStore:
    """This rank's newest generation batch, in memory and, with ``persist`` (a batch that serves several
    optimizer steps), in ``<stage>/rollouts/rank<r>/gen-<g>.pt``. A batch that serves one step is made again
    after a resume from the very weights that made it the first time: it needs no file."""

    def __init__(self, folder: Path, rank: int, persist: bool = True) -> None:
        self.folder = folder / f"rank{rank:05d}"
        self.persist = persist
        self.index: int | None = None
        self.value: Any = None

    def get(self, index: int, make: Callable[[], T]) -> T:
        if self.index == index:
            return self.value
        path = self.folder / f"gen-{index}.pt"
        if not self.persist:
            self.index, self.value = index, make()
            return self.value
        if path.is_file():
            value = torch.load(path, weights_only=False)
        else:
            value = make()
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = temp_file_beside(path)
            with os.fdopen(fd, "wb") as f:
                torch.save(value, f)
            os.replace(tmp, path)
        for old in self.folder.glob("gen-*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        self.index, self.value = index, value
        return value
