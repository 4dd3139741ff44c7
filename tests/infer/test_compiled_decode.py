"""Compiled decoding over the static KV cache: the same logits as the eager cached forward, the same greedy
tokens as the plain generator (left-padded batches included); models it cannot take are refused."""

from __future__ import annotations

import pytest
import torch

from lmhpc.infer.compiled import CompiledDecodeStep
from lmhpc.infer.generate import Generator
from lmhpc.model.args import MoEArgs
from lmhpc.model.cache import InferenceCache
from tests.infer.models import VOCAB, build, tiny_args

PROMPTS = ["the quick brown", "a", "seven tired sailors and"]


@pytest.mark.parametrize("compile", [False, True])
def test_static_step_logits_equal_the_cached_forward(compile):
    model = build(tiny_args(n_kv_heads=2), seed=4)
    step = CompiledDecodeStep(model, compile=compile)
    prompt = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False  # row 1 left-padded
    with torch.inference_mode():
        eager, static = InferenceCache(model.args, 2, 16), InferenceCache(model.args, 2, 16)
        a = model(prompt, cache=eager, token_mask=mask, last_only=True)[:, -1]
        b = model(prompt, cache=static, token_mask=mask, last_only=True)[:, -1]
        for _ in range(8):
            nxt = a.argmax(-1, keepdim=True)
            a = model(nxt, cache=eager)[:, -1]
            b = step(nxt, static)
            assert (a - b).abs().max() <= 1e-5
        assert static.length == eager.length and static.next_position.tolist() == eager.next_position.tolist()


@pytest.mark.slow
def test_compiled_generator_equals_eager_greedy(sp_tokenizer):
    model = build(tiny_args(n_layers=3, n_kv_heads=2), seed=1)
    want = Generator(model, sp_tokenizer).generate(PROMPTS, max_new_tokens=20, ignore_eos=True)
    compiled = Generator(model, sp_tokenizer, compile=True)
    for _ in range(2):  # the second call reuses the compiled step
        got = compiled.generate(PROMPTS, max_new_tokens=20, ignore_eos=True)
        assert [c.token_ids for c in got] == [c.token_ids for c in want]


@pytest.mark.parametrize("kw", [{"layer_pattern": "MA"}, {"moe": MoEArgs(num_experts=4, top_k=2)}])
def test_models_it_cannot_take_are_refused(kw):
    with pytest.raises(ValueError, match="dense attention-only"):
        CompiledDecodeStep(build(tiny_args(**kw)))


@pytest.mark.slow
def test_generate_command_compile(tmp_path, sp_tokenizer, capsys):
    from lmhpc.cli import main
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    model = build(tiny_args(n_kv_heads=2), seed=1)
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer.path.parent))
    folder = str(write_consolidated(weights, tmp_path / "model"))
    [want] = Generator(model, sp_tokenizer).generate(["the quick brown"], max_new_tokens=10)
    assert main(["generate", folder, "--prompt", "the quick brown", "--max-new-tokens", "10", "--compile"]) == 0
    assert capsys.readouterr().out == want.text + "\n"
