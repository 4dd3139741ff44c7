"""The medusa stage end to end on a tiny model: the loss falls, the heads open and decode to plain greedy's
tokens, preemption → resume gives bitwise-identical losses, bad config fails naming the key."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
import pytest
import yaml

from lmhpc.config import ConfigError, load_config
from lmhpc.exchange.load import load_model
from lmhpc.infer.generate import Generator
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.medusa.decode import MedusaGenerator
from lmhpc.medusa.heads import load_heads
from lmhpc.tokenizer.indexed import IndexedDatasetWriter
from tests.align.conftest import StageRun, chat_tokenizer, run_config, tiny_source  # noqa: F401
from tests.train.fixtures import sample_texts


@pytest.fixture(scope="module")
def shard(tmp_path_factory, tiny_source):  # noqa: F811
    """Sample texts tokenized with the tiny model's tokenizer, as one .bin/.idx shard."""
    tokenizer = load_model(tiny_source).tokenizer
    prefix = tmp_path_factory.mktemp("medusa-tokens") / "texts"
    with IndexedDatasetWriter(prefix, np.uint16) as w:
        for text in sample_texts(120, seed=3):
            w.add_document(tokenizer.encode(text) + [tokenizer.eos_id])
    return prefix


def _section(source, shard, **kw) -> dict:
    return {"init_from": str(source), "prefixes": [str(shard)], "steps": 24, "batch_size": 4, "seq_len": 32,
            "lr": 3e-2, "warmup": 2, "log_every": 1, "checkpoint_every": 10, "threads": 1, **kw}


def _run(tmp_path, name, section) -> StageRun:
    return StageRun(run_config(tmp_path, name, ["medusa"], {"medusa": section}), "medusa")


def test_heads_train_open_and_decode_to_plain_greedy(tmp_path, tiny_source, shard):  # noqa: F811
    run = _run(tmp_path, "medusa", _section(tiny_source, shard))
    assert run.run() == [0], run.logs()
    rows = run.metrics()
    assert [r["step"] for r in rows] == list(range(1, 25))
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    meta = json.loads((run.stage_dir / "medusa.json").read_text())
    assert meta["heads"]["num_heads"] == 3 and meta["steps"] == 24
    loaded = load_model(tiny_source)
    heads = load_heads(run.stage_dir, loaded.model)
    prompts = ["the cat", "a small boat"]
    want = Generator(loaded.model, loaded.tokenizer).generate(prompts, max_new_tokens=20, ignore_eos=True)
    gen = MedusaGenerator(loaded.model, heads, loaded.tokenizer)
    got = gen.generate(prompts, max_new_tokens=20, ignore_eos=True)
    assert [c.token_ids for c in got] == [c.token_ids for c in want]


def test_preemption_resumes_with_bitwise_identical_losses(tmp_path, tiny_source, shard):  # noqa: F811
    section = _section(tiny_source, shard, steps=30, checkpoint_every=100)
    reference = _run(tmp_path, "reference", section)
    assert reference.run() == [0], reference.logs()
    run = _run(tmp_path, "interrupted", section)
    procs = run.start()
    path = run.stage_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while not path.exists() or len(path.read_text().splitlines()) < 5:
            assert procs[0].poll() is None, f"the job ended before the signal\n{run.logs()}"
            assert time.time() < deadline, run.logs()
            time.sleep(0.02)
        procs[0].send_signal(signal.SIGUSR1)
        assert procs[0].wait(timeout=240) == REQUEUE_EXIT_CODE, run.logs()
    finally:
        if procs[0].poll() is None:
            procs[0].kill()
    saved = sorted((run.stage_dir / "checkpoints").glob("step_*.pt"))
    assert saved and 5 <= int(saved[-1].stem.split("_")[1]) < 30
    assert run.run() == [0], run.logs()
    assert run.losses() == reference.losses()
    heads = "heads.safetensors"
    assert (run.stage_dir / heads).read_bytes() == (reference.stage_dir / heads).read_bytes()


@pytest.mark.parametrize(("override", "key"), [
    ({"num_heads": 0}, "medusa.num_heads"),
    ({"seq_len": 4}, "medusa.seq_len"),
    ({"target": "logits"}, "medusa.target"),
    ({"loss_decay": 1.5}, "medusa.loss_decay"),
    ({"prefixes": ["missing/shard"]}, "medusa.prefixes[0]"),
    ({"init_from": "", "prefixes": []}, "medusa.init_from"),
])
def test_bad_config_names_the_key(tmp_path, tiny_source, shard, override, key):  # noqa: F811
    path = run_config(tmp_path, "bad", ["medusa"], {"medusa": {**_section(tiny_source, shard), **override}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert key in str(e.value)


def test_heads_of_another_model_are_refused(tmp_path, tiny_source, shard, chat_tokenizer):  # noqa: F811
    from tests.align.conftest import write_tiny_model

    run = _run(tmp_path, "medusa", _section(tiny_source, shard, steps=2))
    assert run.run() == [0], run.logs()
    wider = load_model(write_tiny_model(tmp_path / "wide", chat_tokenizer, dim=48, n_heads=4)).model
    with pytest.raises(ValueError, match="do not fit"):
        load_heads(run.stage_dir, wider)
    with pytest.raises(FileNotFoundError, match="medusa stage"):
        load_heads(tmp_path, wider)
    assert yaml.safe_load(run.config.read_text())["medusa"]["steps"] == 2
