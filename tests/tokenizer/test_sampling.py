"""The tokenizer's sample: order-independent bottom-k by bytes, and the water-filling share of the budget."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from lmhpc.tokenizer.sampling import BottomKSample, SampledDoc, allocate, doc_key, split_prefix, training_lines


def make_docs(sizes: list[int], seed: int = 3) -> list[SampledDoc]:
    return [SampledDoc(doc_key(seed, f"d{i}"), f"d{i}", "x" * n, "s", "en", n) for i, n in enumerate(sizes)]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=0, max_size=80), budget=st.integers(1, 5000),
       parts=st.integers(1, 5), order_seed=st.integers(0, 10_000))
def test_bottom_k_does_not_depend_on_order_or_split(sizes, budget, parts, order_seed):
    docs = make_docs(sizes)
    expected = []
    got_bytes = 0
    for d in sorted(docs):  # the definition: smallest keys until the budget is reached
        if got_bytes >= budget:
            break
        expected.append(d)
        got_bytes += d.nbytes
    shuffled = list(docs)
    random.Random(order_seed).shuffle(shuffled)
    samples = [BottomKSample(budget) for _ in range(parts)]
    for i, d in enumerate(shuffled):
        samples[i % parts].add(d)
    merged = BottomKSample(budget)
    for s in samples:
        merged.merge(s)
    assert merged.docs() == expected
    assert merged.kept_bytes == sum(d.nbytes for d in expected)


def test_keys_depend_on_seed_and_id_only():
    assert doc_key(1, "a") == doc_key(1, "a")
    assert doc_key(1, "a") != doc_key(2, "a")
    assert doc_key(1, "a") != doc_key(1, "b")


def test_allocate_weights_and_water_filling():
    available = {"big": 10_000, "small": 100, "mid": 5_000, "off": 999}
    alloc = allocate(3_000, available, {"big": 1.0, "small": 1.0, "mid": 2.0, "off": 0.0}, "weights")
    assert alloc["small"] == 100  # smaller than its share: gives all it has
    assert alloc["off"] == 0  # weight 0: nothing
    assert abs(alloc["mid"] - 2 * alloc["big"]) <= 1  # the rest shared 2:1
    assert sum(alloc.values()) <= 3_000 and sum(alloc.values()) >= 2_998


def test_allocate_natural_mix_and_budget_above_data():
    available = {"a": 1000, "b": 3000}
    alloc = allocate(2000, available, {}, "natural")
    assert alloc == {"a": 500, "b": 1500}
    assert allocate(1e9, available, {}, "weights") == available  # more budget than data: all of it


def test_split_prefix_and_training_lines():
    docs = make_docs([10, 10, 10, 10, 10])
    ordered = sorted(docs)
    first, second = split_prefix(ordered, 15, 10)
    assert first == ordered[:2] and second == ordered[2:3]
    long_line = SampledDoc(1, "l", "é" * 5000 + "\n\nshort\n", "s", "fr", 10_010)
    lines = list(training_lines([long_line], max_line_bytes=1000))
    assert all(len(x.encode()) <= 1000 for x in lines)
    assert "".join(lines[:-1]) == "é" * 5000 and lines[-1] == "short"
