"""Speculative decoding: greedy output is plain greedy's, sampling keeps the target's distribution, the
ends (EOS, stop strings, length) are the generator's, and caches are cut back to the kept tokens."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lmhpc.cli import main
from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.infer.generate import Generator
from lmhpc.infer.sampling import SamplingParams
from lmhpc.infer.speculative import SpeculativeGenerator, accept_drafts, probabilities, truncated_draft
from lmhpc.model.cache import InferenceCache
from tests.infer.models import VOCAB, build, tiny_args

PROMPTS = ["the quick brown", "a", "seven tired sailors", "cold grey seas and"]


def chi2_critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile of ``df`` degrees of freedom at the normal quantile ``z`` (3.09: p = 0.001),
    by the Wilson–Hilferty approximation."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom of ``counts`` against ``probs``; cells expected fewer than
    ``min_expected`` times are pooled into one."""
    n = counts.sum()
    expected = probs * n
    small = expected < min_expected
    obs = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    stat = float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
    return stat, int(keep.sum()) - 1


@pytest.fixture(scope="module")
def target():
    return build(tiny_args(n_layers=3, n_kv_heads=2), seed=1)


@pytest.mark.parametrize("draft_kind", ["truncated", "unrelated"])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_greedy_equals_plain_greedy(sp_tokenizer, target, draft_kind, k):
    draft = truncated_draft(target, 1) if draft_kind == "truncated" else build(tiny_args(n_layers=1), seed=7)
    plain = Generator(target, sp_tokenizer).generate(PROMPTS, max_new_tokens=24, ignore_eos=True)
    spec = SpeculativeGenerator(target, draft, sp_tokenizer, num_draft=k)
    fast = spec.generate(PROMPTS, max_new_tokens=24, ignore_eos=True)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    assert [c.text for c in fast] == [c.text for c in plain]
    stats = spec.last_stats
    assert stats.tokens == 24 * len(PROMPTS)
    assert 0 < stats.proposed and 0 <= stats.accepted <= stats.proposed
    assert stats.rounds == stats.tokens - stats.accepted  # each round keeps its accepted drafts and one more


def test_a_truncated_draft_shares_the_targets_weights_and_is_accepted_more_than_a_random_one(sp_tokenizer, target):
    draft = truncated_draft(target, 2)
    assert draft.args.n_layers == 2 and draft.layers["1"] is target.layers["1"]
    assert draft.output is target.output and draft.tok_embeddings is target.tok_embeddings
    rates = {}
    for name, d in (("truncated", draft), ("unrelated", build(tiny_args(n_layers=1), seed=7))):
        spec = SpeculativeGenerator(target, d, sp_tokenizer, num_draft=3)
        spec.generate(PROMPTS, max_new_tokens=24, ignore_eos=True)
        rates[name] = spec.last_stats.acceptance_rate
    assert rates["truncated"] > rates["unrelated"]
    with pytest.raises(ValueError, match="draft layers"):
        truncated_draft(target, 3)


def test_ends_and_logprobs_are_the_generators(sp_tokenizer, target):
    draft = truncated_draft(target, 1)
    plain = Generator(target, sp_tokenizer)
    spec = SpeculativeGenerator(target, draft, sp_tokenizer, num_draft=3)
    [long] = plain.generate(["the quick brown"], max_new_tokens=30, ignore_eos=True)
    stop = [long.text[8:11]]  # a stop string that the greedy text reaches
    for kw in ({"stop": stop}, {"max_new_tokens": 5}, {}):
        kw = {"max_new_tokens": 30, **kw}
        want = plain.generate(PROMPTS, logprobs=True, **kw)
        got = spec.generate(PROMPTS, logprobs=True, **kw)
        assert [(c.token_ids, c.text, c.finish_reason) for c in got] == [
            (c.token_ids, c.text, c.finish_reason) for c in want]
        for g, w in zip(got, want):
            assert g.logprobs == pytest.approx(w.logprobs, abs=1e-4)
    assert want[0].finish_reason == "length"
    got = spec.generate(["the quick brown"], max_new_tokens=30, stop=stop)
    assert got[0].finish_reason == "stop"


def test_eos_ends_generation(sp_tokenizer, target):
    # the target's output rows of EOS and of its fourth greedy token swapped: greedy decoding then ends at EOS
    plain = Generator(target, sp_tokenizer)
    [c] = plain.generate(["seven tired"], max_new_tokens=10, ignore_eos=True)
    eos = sp_tokenizer.eos_id
    tweaked = build(tiny_args(n_layers=3, n_kv_heads=2), seed=1)
    with torch.no_grad():
        w = tweaked.output.weight
        w[[eos, c.token_ids[3]]] = w[[c.token_ids[3], eos]]
    want = Generator(tweaked, sp_tokenizer).generate(["seven tired"], max_new_tokens=10)
    got = SpeculativeGenerator(tweaked, truncated_draft(tweaked, 2), sp_tokenizer, num_draft=4).generate(
        ["seven tired"], max_new_tokens=10)
    assert want[0].finish_reason == "eos"
    assert (got[0].token_ids, got[0].text, got[0].finish_reason) == (want[0].token_ids, want[0].text, "eos")


def test_accept_drafts_preserves_the_target_distribution():
    """Position-wise fixed distributions: whatever q proposes, the kept tokens of rounds of k = 2 drafts are
    independent draws from p, position by position (checked on the joint distribution of three tokens)."""
    vocab, length, draws = 4, 3, 12000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(length, vocab, generator=g) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(length, vocab, generator=g) * 1.5, dim=-1)
    counts = torch.zeros(vocab ** length)
    draft_counts = torch.zeros(vocab ** length)
    for _ in range(draws):
        out: list[int] = []
        while len(out) < length:
            s = len(out)
            k = min(2, length - s - 1)
            drafts = [int(torch.multinomial(q[s + i], 1, generator=g)) for i in range(k)]
            kept, _ = accept_drafts(drafts, p[s:s + k + 1], q[s:s + k], g)
            out.extend(kept)
        counts[sum(t * vocab ** i for i, t in enumerate(reversed(out[:length])))] += 1
        proposal = [int(torch.multinomial(q[i], 1, generator=g)) for i in range(length)]
        draft_counts[sum(t * vocab ** i for i, t in enumerate(reversed(proposal)))] += 1
    joint = torch.tensor([math.prod(float(p[i, t]) for i, t in enumerate(cell))
                          for cell in itertools.product(range(vocab), repeat=length)])
    stat, df = chi2(counts, joint)
    assert stat < chi2_critical(df)
    stat_q, df_q = chi2(draft_counts, joint)  # the test tells the draft's distribution from the target's
    assert stat_q > chi2_critical(df_q)


@pytest.mark.parametrize("params", [{"temperature": 1.0}, {"temperature": 0.7, "top_k": 6, "top_p": 0.9}])
def test_sampled_two_token_distribution_is_the_targets(sp_tokenizer, params):
    """Two tokens after a prompt, drawn many times with a random draft: their empirical joint distribution
    against the target's exact one (from full forwards, through the same temperature and filters)."""
    vocab = 8
    small = {"vocab_size": vocab, "dim": 16, "n_heads": 2, "embedding_init_std": 1.0, "init_std": 0.3}
    target = build(tiny_args(n_layers=2, **small), seed=3)
    draft = build(tiny_args(n_layers=1, **small), seed=11)
    prompt = [4, 6, 5]
    sp = SamplingParams(**params)
    with torch.no_grad():
        first = probabilities(target(torch.tensor([prompt]))[0, -1], sp)
        seconds = probabilities(target(torch.tensor([[*prompt, t] for t in range(vocab)]))[:, -1], sp)
        draft_first = probabilities(draft(torch.tensor([prompt]))[0, -1], sp)
    joint = (first[:, None] * seconds).flatten()
    assert float((draft_first - first).abs().sum()) > 0.3  # the draft is far from the target
    draws = 2500
    spec = SpeculativeGenerator(target, draft, sp_tokenizer, num_draft=2, transpose_weights=False)
    completions = spec.generate([prompt] * draws, max_new_tokens=2, seed=5, ignore_eos=True, **params)
    counts = torch.zeros(vocab * vocab)
    for c in completions:
        counts[c.token_ids[0] * vocab + c.token_ids[1]] += 1
    stat, df = chi2(counts, joint)
    assert stat < chi2_critical(df)
    assert 0 < spec.last_stats.accepted < spec.last_stats.proposed


def test_cache_truncate_forgets_slots(target):
    tokens = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = InferenceCache(target.args, 1, 16)
        target(tokens[:, :5], cache=cache)
        target(tokens[:, 5:9], cache=cache)  # four tokens, then forget three of them
        cache.truncate(6)
        assert cache.length == 6 and int(cache.next_position[0]) == 6
        after = target(tokens[:, 6:9], cache=cache)[0]
        full = target(tokens)[0, 6:9]
    torch.testing.assert_close(after, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="truncate"):
        cache.truncate(10)
    hybrid = InferenceCache(tiny_args(layer_pattern="MA"), 1, 8)
    with pytest.raises(ValueError, match="Mamba"):
        hybrid.truncate(0)


def write_model(model, sp_tokenizer, folder):
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer.path.parent))
    return str(write_consolidated(weights, folder))


def test_generate_command_speculative(tmp_path, sp_tokenizer, target, capsys):
    model = write_model(target, sp_tokenizer, tmp_path / "target")
    draft = write_model(build(tiny_args(n_layers=1), seed=7), sp_tokenizer, tmp_path / "draft")
    [want] = Generator(target, sp_tokenizer).generate(["the quick brown"], max_new_tokens=12)
    for extra in (["--draft-layers", "1"], ["--speculative", draft, "--num-draft", "2"]):
        assert main(["generate", model, "--prompt", "the quick brown", "--max-new-tokens", "12", *extra]) == 0
        out = capsys.readouterr()
        assert out.out == want.text + "\n"
        assert "drafts accepted" in out.err and "tokens/s" in out.err
    assert main(["generate", model, "--prompt", "a", "--draft-layers", "3"]) == 2
    assert "draft layers" in capsys.readouterr().err
    assert main(["generate", model, "--prompt", "a", "--speculative", str(tmp_path / "missing")]) == 2
    assert main(["generate", model, "--prompt", "a", "--draft-layers", "1", "--repetition-penalty", "1.2"]) == 2
    assert "repetition" in capsys.readouterr().err


def test_a_seed_repeats_sampled_text(sp_tokenizer, target):
    spec = SpeculativeGenerator(target, truncated_draft(target, 1), sp_tokenizer, num_draft=3)
    kw = {"max_new_tokens": 16, "temperature": 0.9, "top_k": 30, "ignore_eos": True}
    a, b, c = (spec.generate(PROMPTS, seed=s, **kw) for s in (3, 3, 4))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    with pytest.raises(ValueError, match="num_draft"):
        SpeculativeGenerator(target, target, sp_tokenizer, num_draft=0)
    with pytest.raises(ValueError, match="vocabulary"):
        SpeculativeGenerator(target, build(tiny_args(vocab_size=64)), sp_tokenizer)
