"""Prefix-tree scoring equals running each context + continuation alone; rolling windows equal the harness's."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from lmhpc.evaluate.perplexity import rolling_windows
from lmhpc.evaluate.scoring import Scorer, TooLong
from tests.evaluate.conftest import tiny_model


def reference(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """log P(continuation | context) and greedy, from one plain forward of the whole sequence."""
    seq = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = F.log_softmax(model(seq[:, :-1]).float(), dim=-1)[0]
    rows = logprobs[len(context) - 1:]
    wanted = torch.tensor(continuation)
    return float(rows.gather(-1, wanted[:, None]).sum()), bool((rows.argmax(-1) == wanted).all())


def random_requests(vocab: int, seed: int, contexts: int = 7, choices: int = 4) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(contexts):
        context = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        for _ in range(rng.randint(1, choices)):
            out.append((context, [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]))
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("kw", [{}, {"tie_embeddings": True}, {"n_kv_heads": 4}, {"mup_base_dim": 16},
                                {"moe": {"num_experts": 4, "top_k": 2, "capacity_factor": 0.0}}])
def test_tree_scores_equal_separate_forwards(kw):
    from lmhpc.model.args import MoEArgs

    if "moe" in kw:
        kw = {**kw, "moe": MoEArgs(**kw["moe"])}
    model = tiny_model(vocab_size=50, **kw)
    requests = random_requests(50, seed=1)
    scorer = Scorer(model, torch.device("cpu"), max_len=64, batch_tokens=48)
    got = scorer.loglikelihood(requests)
    assert scorer.counters.trees < len(requests), "requests sharing a context must share one tree"
    assert scorer.counters.batches > 1
    for (context, continuation), (logprob, greedy) in zip(requests, got):
        want, want_greedy = reference(model, context, continuation)
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy


def test_greedy_flag_marks_the_argmax_continuation():
    model = tiny_model(vocab_size=30)
    context = [3, 4, 5]
    with torch.no_grad():
        best = int(model(torch.tensor([context]))[0, -1].argmax())
    scorer = Scorer(model, torch.device("cpu"), max_len=64)
    (_, greedy), (_, other) = scorer.loglikelihood([(context, [best]), (context, [(best + 1) % 30])])
    assert greedy and not other


def test_batch_size_and_order_do_not_change_scores():
    model = tiny_model(vocab_size=40, seed=2)
    requests = random_requests(40, seed=5, contexts=10)
    small = Scorer(model, torch.device("cpu"), 64, batch_tokens=16).loglikelihood(requests)
    large = Scorer(model, torch.device("cpu"), 64, batch_tokens=100_000).loglikelihood(requests)
    assert [s for s, _ in small] == pytest.approx([s for s, _ in large], abs=1e-5)


def test_plain_path_equals_tree_path():
    model = tiny_model(vocab_size=40, seed=3)
    requests = random_requests(40, seed=6)
    tree = Scorer(model, torch.device("cpu"), 64).loglikelihood(requests)
    plain_scorer = Scorer(model, torch.device("cpu"), 64)
    plain_scorer.trees = False  # what a model with Mamba layers gets
    plain = plain_scorer.loglikelihood(requests)
    assert [s for s, _ in tree] == pytest.approx([s for s, _ in plain], abs=1e-4)
    assert [g for _, g in tree] == [g for _, g in plain]


def test_mamba_model_is_scored_through_its_own_forward():
    model = tiny_model(vocab_size=40, layer_pattern="MA")
    requests = random_requests(40, seed=7, contexts=3)
    scorer = Scorer(model, torch.device("cpu"), 64)
    assert not scorer.trees
    for (context, continuation), (logprob, _) in zip(requests, scorer.loglikelihood(requests)):
        assert logprob == pytest.approx(reference(model, context, continuation)[0], abs=1e-4)


def test_a_request_longer_than_the_model_is_refused():
    scorer = Scorer(tiny_model(vocab_size=20), torch.device("cpu"), max_len=8)
    assert scorer.fits([1] * 5, [2] * 4)  # 5 + 4 - 1 = 8 positions
    assert not scorer.fits([1] * 5, [2] * 5)
    with pytest.raises(TooLong, match="exceed the model's 8 positions"):
        scorer.loglikelihood([([1] * 5, [2] * 5)])
    with pytest.raises(ValueError, match="empty continuation"):
        scorer.loglikelihood([([1], [])])


@pytest.mark.parametrize("length,window", [(1, 4), (4, 4), (5, 4), (17, 4), (30, 7), (64, 64), (100, 32)])
def test_rolling_windows_equal_the_harness(length, window):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 100 + length))
    ours = list(rolling_windows(tokens, 7, window))
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, window, 1)]
    assert ours == theirs
    assert [t for _, cont in ours for t in cont] == tokens  # every token predicted exactly once
    assert all(len(c) + len(k) - 1 <= window for c, k in ours)


def test_short_contexts_of_long_continuations_are_not_shared():
    from lmhpc.evaluate.scoring import TREE_TOKENS

    model = tiny_model(vocab_size=30, max_seq_len=64)
    windows = [([7], list(range(i, i + 60))[:60]) for i in range(0, 6)] + [([1, 2, 3], [4, 5])] * 3
    windows = [(c, [t % 30 for t in k]) for c, k in windows]
    scorer = Scorer(model, torch.device("cpu"), 64)
    got = scorer.loglikelihood(windows)
    assert scorer.counters.trees == 6 + 1  # each rolling window alone; the short continuations share
    for (context, continuation), (logprob, _) in zip(windows, got):
        assert logprob == pytest.approx(reference(model, context, continuation)[0], abs=1e-4)
    assert TREE_TOKENS >= 512
