"""Fixtures of the alignment tests: a ChatML sentencepiece tokenizer, tiny starting models (consolidated folders
with their tokenizer), run configs, and N-rank launches of a stage as SLURM starts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from tests.train.conftest import free_port
from tests.train.fixtures import sample_texts

REPO = Path(__file__).resolve().parents[2]
CHAT_DATA = REPO / "data" / "align" / "chat"

torch.set_num_threads(1)


def chat_lines() -> list[str]:
    """Text of the shipped chat set (every turn), for training the test tokenizer."""
    lines = []
    for path in sorted(CHAT_DATA.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                lines += [m["content"] for m in json.loads(line)["messages"]]
    return lines


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory) -> Path:
    """A byte-fallback BPE sentencepiece model with <|im_start|>/<|im_end|> (ChatML), trained on the chat set."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("chat-tokenizer")
    (folder / "corpus.txt").write_text("\n".join(sample_texts(100, seed=5) + chat_lines()) + "\n")
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=512, model_type="bpe", byte_fallback=True, character_coverage=1.0,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
                                   user_defined_symbols=["<|im_start|>", "<|im_end|>"], split_digits=True,
                                   remove_extra_whitespaces=False, normalization_rule_name="identity")
    (folder / "corpus.txt").unlink()
    return folder


def tiny_args(**kw) -> ModelArgs:
    return ModelArgs(**{"vocab_size": 512, "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                        "max_seq_len": 256, **kw})


def write_tiny_model(folder: Path, tokenizer: Path, seed: int = 0, **kw) -> Path:
    """A random tiny model as a consolidated folder (what ``init_from`` opens), with the tokenizer files."""
    torch.manual_seed(seed)
    model = Transformer(tiny_args(**kw))
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer), None, {})
    return write_consolidated(weights, folder)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, chat_tokenizer) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", chat_tokenizer)


def run_config(tmp_path: Path, name: str, stages: list[str], sections: dict, world: int = 1) -> Path:
    path = tmp_path / f"{name}.yaml"
    resources = {s: {"tasks": world} for s in stages}
    path.write_text(yaml.safe_dump({
        "run": {"name": name, "runs_dir": str(tmp_path / "runs"), "stages": stages, "seed": 7},
        "resources": resources,
        "wandb": {"mode": "disabled"},
        **sections,
    }))
    return path


class StageRun:
    """A stage run as separate processes, one per rank (RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT)."""

    def __init__(self, config: Path, stage: str, world: int = 1) -> None:
        from lmhpc.config import load_config

        self.config, self.stage, self.world = config, stage, world
        self.run_dir = load_config(config).run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def stage_dir(self) -> Path:
        return self.run_dir / self.stage

    def start(self) -> list[subprocess.Popen]:
        port = free_port()
        procs = []
        for rank in range(self.world):
            env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(self.world), "LOCAL_RANK": str(rank),
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WANDB_MODE": "disabled",
                   "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
            out = open(self.run_dir / f"{self.stage}-rank{rank}.log", "a")
            procs.append(subprocess.Popen([sys.executable, "-m", "lmhpc", "stage", self.stage, str(self.config)],
                                          env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
        return procs

    def run(self, timeout: float = 300) -> list[int]:
        procs = self.start()
        try:
            return [p.wait(timeout=timeout) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()

    def logs(self) -> str:
        return "\n".join((self.run_dir / f"{self.stage}-rank{r}.log").read_text()[-4000:] for r in range(self.world))

    def metrics(self) -> list[dict]:
        from lmhpc.train.metrics import read_metrics

        return read_metrics(self.stage_dir / "metrics.jsonl")

    def losses(self) -> list[float]:
        return [row["loss"] for row in self.metrics()]
