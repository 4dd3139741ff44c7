"""Greedy generation equals transformers' ``generate`` on the Hugging Face export, token for token."""

from __future__ import annotations

import pytest
import torch

from lmhpc.exchange.hf import write_hf
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.infer.generate import Generator
from lmhpc.model.args import MoEArgs
from tests.infer.models import build, tiny_args

PROMPTS = ["the quick brown fox", "seven", "cold grey seas that run north into", "a lazy dog while"]
NEW = 24


@pytest.mark.parametrize("kw", [{"n_kv_heads": 2}, {"n_kv_heads": 1, "tie_embeddings": True},
                                {"moe": MoEArgs(num_experts=4, top_k=2, capacity_factor=0.0)}],
                         ids=["gqa", "mqa_tied", "mixtral"])
def test_greedy_equals_transformers_generate(tmp_path, sp_tokenizer, kw):
    from transformers import AutoModelForCausalLM

    model = build(tiny_args(**kw), seed=1)
    with torch.no_grad():  # sharper attention: a wrong rotary layout would change the tokens
        for layer in model.layers.values():
            layer.attention.wq.weight.mul_(4)
            layer.attention.wk.weight.mul_(4)
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer.path.parent))
    hf = AutoModelForCausalLM.from_pretrained(write_hf(weights, tmp_path / "hf"), dtype=torch.float32).eval()

    ours = Generator(model, sp_tokenizer).generate(PROMPTS, max_new_tokens=NEW)
    encoded = [sp_tokenizer.encode(p) for p in PROMPTS]
    width = max(map(len, encoded))
    ids = torch.full((len(PROMPTS), width), sp_tokenizer.pad_id)
    attention_mask = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, width - len(e):] = torch.tensor(e)
        attention_mask[row, width - len(e):] = 1
    with torch.no_grad():
        batch = hf.generate(ids, attention_mask=attention_mask, max_new_tokens=NEW, do_sample=False,
                            eos_token_id=sp_tokenizer.eos_id, pad_token_id=sp_tokenizer.pad_id)
    assert sum(len(c.token_ids) for c in ours) >= 3 * NEW  # not ended at once by EOS
    for row, (e, c) in enumerate(zip(encoded, ours)):
        with torch.no_grad():
            alone = hf.generate(torch.tensor([e]), attention_mask=torch.ones(1, len(e), dtype=torch.long),
                                max_new_tokens=NEW, do_sample=False, eos_token_id=sp_tokenizer.eos_id,
                                pad_token_id=sp_tokenizer.pad_id)
        assert alone[0, len(e):].tolist()[:len(c.token_ids)] == c.token_ids, PROMPTS[row]
        assert batch[row, width:].tolist()[:len(c.token_ids)] == c.token_ids, PROMPTS[row]


def test_repetition_penalty_equals_transformers(tmp_path, sp_tokenizer):
    """The penalty counts the prompt's tokens and each generated one, as transformers' does."""
    from transformers import AutoModelForCausalLM

    model = build(tiny_args(n_kv_heads=2), seed=1)
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer.path.parent))
    hf = AutoModelForCausalLM.from_pretrained(write_hf(weights, tmp_path / "hf"), dtype=torch.float32).eval()
    gen = Generator(model, sp_tokenizer)
    for prompt in PROMPTS[:2]:
        e = sp_tokenizer.encode(prompt)
        [plain] = gen.generate([e], max_new_tokens=NEW, ignore_eos=True)
        [c] = gen.generate([e], max_new_tokens=NEW, repetition_penalty=1.8, ignore_eos=True)
        assert c.token_ids != plain.token_ids
        with torch.no_grad():
            out = hf.generate(torch.tensor([e]), attention_mask=torch.ones(1, len(e), dtype=torch.long),
                              max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, repetition_penalty=1.8,
                              eos_token_id=sp_tokenizer.eos_id, pad_token_id=sp_tokenizer.pad_id)
        assert out[0, len(e):].tolist() == c.token_ids, prompt
