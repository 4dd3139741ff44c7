"""The lm-evaluation-harness adapter: harness tasks run on our model through ``simple_evaluate`` give the
answers we can predict, and the same scores as the stage's own multiple-choice and perplexity code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmhpc.evaluate.config import HarnessConfig
from lmhpc.evaluate.multiple_choice import score_items
from lmhpc.evaluate.perplexity import score_documents
from lmhpc.evaluate.scoring import Scorer
from lmhpc.evaluate.tasks import file_item
from lmhpc.evaluate.texts import make_document
from lmhpc.exchange.tokenizer import load_tokenizer
from tests.evaluate.conftest import tiny_model
from tests.evaluate.test_evaluate_perplexity import fixed_distribution_model

ITEMS = [
    {"context": "The quick brown fox", "choices": ["jumps", "jumps over the lazy dog", "quietly brews coffee"],
     "gold": 0},
    {"context": "Seven tired wizards", "choices": ["brew strong coffee near old stone bridges", "brew"], "gold": 0},
    {"context": "Rivers run", "choices": ["north into cold grey seas", "north", "into the sea"], "gold": 2},
    {"context": "A man is sitting on a roof.", "choices": ["He starts pulling up roofing", "Yes"], "gold": 1},
]
TEXTS = ["the quick brown fox jumps over a lazy dog " * 6, "cold grey seas and rivers that run north"]


def write_tasks(folder: Path) -> Path:
    """A multiple-choice task and a rolling log-likelihood task over local json files."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ITEMS))
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    (folder / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {folder / 'mc.jsonl'}}}}}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{gold}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (folder / "tiny_ppl.yaml").write_text(
        "task: tiny_ppl\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {folder / 'texts.jsonl'}}}}}\n"
        "test_split: test\noutput_type: loglikelihood_rolling\n"
        'doc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return folder


def adapter_for(model, tokenizer, max_length: int = 64):
    from lmhpc.evaluate.harness import LMHarnessModel

    return LMHarnessModel(model, tokenizer, torch.device("cpu"), max_length, batch_tokens=256)


def run(adapter, folder: Path, tasks: list[str], cache: Path) -> dict:
    from lmhpc.evaluate.harness import run_harness

    return run_harness(adapter, HarnessConfig(tasks=tasks, include_path=str(folder)), lambda p: Path(p), cache)


def test_uniform_model_picks_the_shortest_continuation(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    model = fixed_distribution_model(torch.zeros(tokenizer.vocab_size), max_seq_len=64)
    # every token costs log V: acc picks the fewest tokens, acc_norm the most characters per token
    expected_acc, expected_norm = [], []
    for item in ITEMS:
        counts = [len(tokenizer.encode(item["context"] + " " + c)) - len(tokenizer.encode(item["context"]))
                  for c in item["choices"]]
        acc_pick = counts.index(min(counts))
        norm = [-n / len(c) for n, c in zip(counts, item["choices"])]
        expected_acc.append(float(acc_pick == item["gold"]))
        expected_norm.append(float(norm.index(max(norm)) == item["gold"]))
    assert 0 < sum(expected_acc) < len(ITEMS), "the items should not all agree"
    folder = write_tasks(tmp_path / "tasks")
    harness = run(adapter_for(model, tokenizer), folder, ["tiny_mc"], tmp_path / "cache")["tiny_mc"]
    ours = score_items(Scorer(model, torch.device("cpu"), 64), tokenizer, tokenizer.bos_id,
                       [file_item(d) for d in ITEMS], "tiny_mc")
    assert harness["acc"] == pytest.approx(sum(expected_acc) / len(ITEMS), abs=1e-9)
    assert harness["acc_norm"] == pytest.approx(sum(expected_norm) / len(ITEMS), abs=1e-9)
    assert ours.acc == expected_acc and ours.acc_norm == expected_norm


def test_harness_scores_equal_the_stage_scores_on_a_random_model(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=4)
    folder = write_tasks(tmp_path / "tasks")
    adapter = adapter_for(model, tokenizer, max_length=16)  # short windows: the texts need several
    results = run(adapter, folder, ["tiny_mc", "tiny_ppl"], tmp_path / "cache")
    ours = score_items(Scorer(model, torch.device("cpu"), 64), tokenizer, tokenizer.bos_id,
                       [file_item(d) for d in ITEMS], "tiny_mc")
    assert results["tiny_mc"]["acc"] == pytest.approx(sum(ours.acc) / len(ITEMS), abs=1e-9)
    assert results["tiny_mc"]["acc_norm"] == pytest.approx(sum(ours.acc_norm) / len(ITEMS), abs=1e-9)
    docs = [make_document("t", text, tokenizer) for text in TEXTS]
    assert max(len(d.tokens) for d in docs) > 16
    tallies, _ = score_documents(Scorer(model, torch.device("cpu"), 16), docs, tokenizer.bos_id, window=16)
    assert results["tiny_ppl"]["bits_per_byte"] == pytest.approx(tallies["all"].summary()["bits_per_byte"],
                                                                   rel=1e-5)
    assert math.isfinite(results["tiny_ppl"]["word_perplexity"])


def test_adapter_cuts_long_requests_from_the_left_like_the_harness(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=5)
    adapter = adapter_for(model, tokenizer, max_length=8)
    context, continuation = list(range(10, 30)), [5, 6, 7]
    (got,) = adapter._loglikelihood_tokens([(("", ""), context, continuation)])
    kept = (context + continuation)[-9:]
    (want,) = Scorer(model, torch.device("cpu"), 8).loglikelihood([(kept[:-3], continuation)])
    assert got == want and adapter.truncated == 1
    with pytest.raises(ValueError, match="continuation of 9 tokens"):
        adapter._loglikelihood_tokens([(("", ""), [1], list(range(9)))])


def test_generate_until_is_the_generator_cut_at_stop_strings(tokenizer_dir):
    from lm_eval.api.instance import Instance

    from lmhpc.infer.generate import Generator

    tokenizer = load_tokenizer(tokenizer_dir)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=6, max_seq_len=128)
    adapter = adapter_for(model, tokenizer, max_length=128)
    prompts = ["The quick brown fox", "Seven tired wizards quietly"]
    free = Generator(model, tokenizer).generate(prompts, max_new_tokens=12)
    stop = free[0].text[3:5]  # a stop string the first continuation meets
    requests = [Instance("generate_until", {}, (p, {"until": [stop], "max_gen_toks": 12}), i)
                for i, p in enumerate(prompts)]
    got = adapter.generate_until(requests)
    assert got[0] == free[0].text.split(stop)[0] and len(got[0]) < len(free[0].text)
    assert got[1] == free[1].text.split(stop)[0]
