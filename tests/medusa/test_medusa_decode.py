"""Medusa decoding: greedy output is plain greedy's token for token (whatever the heads propose), trees are
checked, typical acceptance keeps a seed's text, the cache keeps the accepted path's keys and values."""

from __future__ import annotations

import pytest
import torch

from lmhpc.infer.generate import Generator
from lmhpc.medusa.decode import MedusaGenerator
from lmhpc.medusa.heads import HeadsArgs, MedusaHeads
from lmhpc.medusa.tree import build_tree, parse_tree
from lmhpc.model.cache import InferenceCache
from tests.infer.models import VOCAB, bigram_model, build, tiny_args

PROMPTS = ["the quick brown", "a", "seven tired sailors", "cold grey seas and"]
TREES = {"default": None, "chain": parse_tree("chain:3"), "wide": parse_tree("0;1;2;0,0;0,1;1,0;0,0,0;0,0,1")}


def random_heads(model, num_heads=3, seed=0, share_output=True):
    torch.manual_seed(seed)
    heads = MedusaHeads(HeadsArgs(model.args.dim, model.args.vocab_size, num_heads, share_output=share_output),
                        model.output)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return heads.eval()


@pytest.fixture(scope="module")
def target():
    return build(tiny_args(n_layers=3, n_kv_heads=2), seed=1)


@pytest.mark.parametrize("tree", list(TREES))
@pytest.mark.parametrize("share_output", [True, False])
def test_greedy_equals_plain_greedy(sp_tokenizer, target, tree, share_output):
    plain = Generator(target, sp_tokenizer).generate(PROMPTS, max_new_tokens=24, ignore_eos=True, logprobs=True)
    kw = {} if TREES[tree] is None else {"tree": TREES[tree]}
    gen = MedusaGenerator(target, random_heads(target, share_output=share_output), sp_tokenizer, **kw)
    fast = gen.generate(PROMPTS, max_new_tokens=24, ignore_eos=True, logprobs=True)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.text for c in fast] == [c.text for c in plain]
    for f, p in zip(fast, plain):
        assert f.logprobs == pytest.approx(p.logprobs, abs=1e-4)
    s = gen.last_stats
    assert s.tokens == 24 * len(PROMPTS) and s.rounds == s.tokens - s.accepted


def test_heads_that_know_the_continuation_are_accepted(sp_tokenizer):
    """A model whose greedy successor of token i is (i + 1) mod V, and heads that predict i + 2, i + 3, i + 4
    from the hidden state (one-hot of the current token): every proposal is accepted, 4 tokens per forward."""
    vocab = 64
    model = bigram_model({i: (i + 1) % vocab for i in range(vocab)}, vocab=vocab)
    heads = MedusaHeads(HeadsArgs(model.args.dim, vocab, 3, num_layers=0, share_output=False))
    with torch.no_grad():
        for k, proj in enumerate(heads.projections):
            w = torch.zeros(vocab, model.args.dim)
            for i in range(vocab):
                w[(i + k + 2) % vocab, i] = 1.0
            proj.weight.copy_(w)
    gen = MedusaGenerator(model, heads.eval(), sp_tokenizer, tree=parse_tree("chain:3"))
    [c] = gen.generate([[5, 9]], max_new_tokens=20, ignore_eos=True)
    assert c.token_ids == [(9 + 1 + i) % vocab for i in range(20)]
    assert gen.last_stats.rounds == 5 and gen.last_stats.accepted == 15


def test_ends_are_the_generators(sp_tokenizer, target):
    plain = Generator(target, sp_tokenizer)
    gen = MedusaGenerator(target, random_heads(target), sp_tokenizer)
    [long] = plain.generate(["the quick brown"], max_new_tokens=30, ignore_eos=True)
    stop = [long.text[8:11]]
    for kw in ({"stop": stop}, {"max_new_tokens": 5}, {"max_new_tokens": 1}, {}):
        kw = {"max_new_tokens": 30, **kw}
        want = plain.generate(PROMPTS, **kw)
        got = gen.generate(PROMPTS, **kw)
        assert [(c.token_ids, c.text, c.finish_reason) for c in got] == [
            (c.token_ids, c.text, c.finish_reason) for c in want]


def test_the_tree_is_cut_where_the_models_positions_end(sp_tokenizer):
    model = build(tiny_args(n_layers=2, max_seq_len=20), seed=2)
    want = Generator(model, sp_tokenizer).generate([[4, 5, 6]], max_new_tokens=17, ignore_eos=True)
    got = MedusaGenerator(model, random_heads(model), sp_tokenizer).generate([[4, 5, 6]], max_new_tokens=17,
                                                                          ignore_eos=True)
    assert got[0].token_ids == want[0].token_ids
    with pytest.raises(ValueError, match="max_seq_len"):
        MedusaGenerator(model, random_heads(model), sp_tokenizer).generate([[4, 5, 6]], max_new_tokens=18)


def test_typical_acceptance_repeats_with_a_seed_and_differs_across_seeds(sp_tokenizer, target):
    gen = MedusaGenerator(target, random_heads(target), sp_tokenizer)
    a = gen.generate(PROMPTS, max_new_tokens=20, temperature=0.8, seed=3)
    b = gen.generate(PROMPTS, max_new_tokens=20, temperature=0.8, seed=3)
    c = gen.generate(PROMPTS, max_new_tokens=20, temperature=0.8, seed=4)
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_trees_are_checked():
    t = build_tree([(0,), (1,), (0, 0)])
    assert t.paths == ((), (0,), (1,), (0, 0)) and t.parents == (-1, 0, 0, 1) and t.widths == (2, 1)
    assert t.ancestors[3].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="prefix"):
        build_tree([(0, 0)])
    with pytest.raises(ValueError, match="deep"):
        build_tree([(0,), (0, 0)], num_heads=1)
    with pytest.raises(ValueError, match="paths like"):
        parse_tree("0;x")
    assert parse_tree("0;1;0,0") == ((0,), (1,), (0, 0))


def test_keep_moves_the_accepted_paths_keys_into_place():
    """After a tree forward and keep(), the cache is the one a plain forward of the kept tokens gives."""
    model = build(tiny_args(n_layers=2, n_kv_heads=2), seed=5)
    tree = build_tree([(0,), (1,), (1, 0)])
    tokens = torch.tensor([[7, 11, 12, 13]])  # root 7, children 11 and 12, then 13 under 12
    with torch.inference_mode():
        a = InferenceCache(model.args, 1, 16)
        model(torch.tensor([[1, 2, 3]]), cache=a)
        a.set_tree(tree.ancestors, tree.depths)
        tree_logits = model(tokens, cache=a)
        a.keep(3, [0, 2, 3])
        b = InferenceCache(model.args, 1, 16)
        model(torch.tensor([[1, 2, 3]]), cache=b)
        path_logits = model(torch.tensor([[7, 12, 13]]), cache=b)
        assert torch.allclose(tree_logits[0, [0, 2, 3]], path_logits[0], atol=1e-5)
        assert a.length == b.length == 6 and a.next_position.tolist() == b.next_position.tolist() == [6]
        for i in a.layers:
            assert torch.allclose(a.layers[i].k[:, :, :6], b.layers[i].k[:, :, :6], atol=1e-5)
        after_a, after_b = model(torch.tensor([[9]]), cache=a), model(torch.tensor([[9]]), cache=b)
        assert torch.allclose(after_a, after_b, atol=1e-5)
    assert VOCAB == model.args.vocab_size


def test_generate_command_medusa(tmp_path, sp_tokenizer, target, capsys):
    from lmhpc.cli import main
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
    from lmhpc.medusa.heads import save_heads

    weights = ModelWeights(model_state(target), target.args, read_tokenizer_files(sp_tokenizer.path.parent))
    model = str(write_consolidated(weights, tmp_path / "target"))
    save_heads(tmp_path / "heads", random_heads(target))
    [want] = Generator(target, sp_tokenizer).generate(["the quick brown"], max_new_tokens=12)
    for extra in ([], ["--tree", "chain:2"]):
        argv = ["generate", model, "--prompt", "the quick brown", "--max-new-tokens", "12", "--medusa",
                str(tmp_path / "heads"), *extra]
        assert main(argv) == 0
        out = capsys.readouterr()
        assert out.out == want.text + "\n"
        assert "tokens per forward" in out.err
    assert main(["generate", model, "--prompt", "a", "--medusa", str(tmp_path / "missing")]) == 2
    assert "medusa stage" in capsys.readouterr().err
    assert main(["generate", model, "--prompt", "a", "--medusa", str(tmp_path / "heads"), "--tree", "0,0"]) == 2
    assert "prefix" in capsys.readouterr().err
    assert main(["generate", model, "--prompt", "a", "--tree", "chain:2"]) == 2
    assert "--medusa" in capsys.readouterr().err
