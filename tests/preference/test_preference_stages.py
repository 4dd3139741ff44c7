"""The reference, dpo and reward stages end to end, as separate processes: dpo's and reward's metrics equal TRL
1.16's on the same model, data and batch order; bad records are quarantined by reason; the reward model opens
with load_reward_model; dpo refuses reference log-probs of other inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmhpc.align.trainer import BatchSlot
from lmhpc.data.quarantine import Quarantine, read_quarantine
from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.exchange.tokenizer import SentencePieceTokenizer
from lmhpc.preference.data import collate_pairs, load_pairs, pad_id_of
from lmhpc.preference.reward_model import load_reward_model, reward_model_tokenizer
from tests.align.conftest import StageRun, run_config
from tests.preference.conftest import PAIRS, tiny_model, tiny_weights
from tests.preference.test_dpo_trl_golden import assert_dpo_step_equal
from tests.preference.trl_runs import REWARD_METRICS, dpo_run, reward_run

SEED, STEPS, GLOBAL, MICRO, LR = 11, 3, 4, 2, 1e-3
BAD = [
    "{not json",
    json.dumps({"prompt": "hi", "chosen": "a"}),
    json.dumps({"prompt": "hi", "chosen": " ", "rejected": "b"}),
    json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}),
    json.dumps({"prompt": "long " * 300, "chosen": "a", "rejected": "b"}),
    json.dumps({"prompt": 5, "chosen": "a", "rejected": "b"}),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer_dir):
    """A starting model (consolidated folder) and a data file: 16 shipped pairs with 6 bad records among them."""
    root = tmp_path_factory.mktemp("pref-stages")
    model = tiny_model(400, seed=3)
    source = write_consolidated(tiny_weights(model, tokenizer_dir), root / "model")
    lines = PAIRS.read_text().splitlines()[:16]
    for i, bad in enumerate(BAD):
        lines.insert(2 * i + 1, bad)
    data = root / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return {"root": root, "source": source, "data": data, "model": model}


def _train(**kw) -> dict:
    return {"steps": STEPS, "lr": LR, "schedule": "constant", "warmup_steps": 0, "micro_batch_size": MICRO,
            "global_batch_size": GLOBAL, "max_len": 128, "device": "cpu", "seed": SEED, "checkpoint_interval": 0,
            "grad_clip": 1.0, **kw}


def _dpo_sections(setup, **dpo) -> dict:
    return {"dpo": {"data": [str(setup["data"])], "init_from": str(setup["source"]), "loss_type": "sigmoid",
                    "beta": 0.1, "train": _train(**dpo.pop("train", {})), **dpo},
            "reference": {"batch_size": 3, "device": "cpu"}}


def _order(n_pairs: int, world: int = 1) -> list[int]:
    """The pair indices the core feeds, step by step (all ranks' micro-batches in rank order)."""
    micro = GLOBAL // (MICRO * world)
    out = []
    for step in range(STEPS):
        for rank in range(world):
            for m in range(micro):
                out += BatchSlot(step, m, micro, MICRO, rank, world, SEED).indices(n_pairs)
    return out


def _pairs(tokenizer_dir: Path, data: Path, tmp: Path):
    tok = SentencePieceTokenizer(tokenizer_dir / "tokenizer.model")
    with Quarantine(tmp / "q.jsonl") as q:
        return load_pairs([data], tok, 128, q), tok


@pytest.mark.slow
def test_reference_then_dpo_equal_trl(tmp_path, setup, tokenizer_dir):
    config = run_config(tmp_path, "dpo", ["reference", "dpo"], _dpo_sections(setup))
    ref = StageRun(config, "reference")
    assert ref.run() == [0], ref.logs()
    stats = json.loads((ref.stage_dir / "stats.json").read_text())
    assert stats["docs_in"] == 22 and stats["docs_out"] == 16 and stats["quarantined"] == 6
    assert stats["quarantine_reasons"] == {"bad_json": 1, "missing_field": 1, "empty_response": 1,
                                           "identical_responses": 1, "too_long": 1, "bad_field": 1}
    assert {e["reason"] for e in read_quarantine(ref.stage_dir / "quarantine" / "pairs.jsonl")} == \
        set(stats["quarantine_reasons"])
    with np.load(ref.stage_dir / "logps.npz") as z:
        assert z["chosen"].shape == (16,) and (z["chosen"] < 0).all() and (z["chosen_tokens"] > 0).all()

    dpo = StageRun(config, "dpo")
    assert dpo.run() == [0], dpo.logs()
    rows = dpo.metrics()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as the reference

    data, _ = _pairs(tokenizer_dir, setup["data"], tmp_path)
    order = [data.pairs[i] for i in _order(len(data.pairs))]
    golden = dpo_run(tiny_weights(setup["model"], tokenizer_dir), order, tmp_path / "trl", steps=STEPS,
                     batch=GLOBAL, lr=LR, loss_type="sigmoid", beta=0.1)
    for step in range(STEPS):
        assert_dpo_step_equal(rows[step]["loss"], rows[step], golden["losses"][step], golden["metrics"][step], step)
    assert rows[-1]["num_tokens"] == sum(p.chosen_length + p.rejected_length for p in order)


@pytest.mark.slow
def test_dpo_refuses_reference_of_other_data(tmp_path, setup):
    config = run_config(tmp_path, "mismatch", ["reference", "dpo"], _dpo_sections(setup))
    ref = StageRun(config, "reference")
    assert ref.run() == [0], ref.logs()
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text("\n".join(setup["data"].read_text().splitlines()[:10]) + "\n")
    sections = _dpo_sections(setup, data=[str(fewer)])
    config = run_config(tmp_path, "mismatch", ["reference", "dpo"], sections)
    dpo = StageRun(config, "dpo")
    assert dpo.run() != [0]
    assert "were computed for other inputs" in dpo.logs() and "rerun the reference stage" in dpo.logs()


@pytest.mark.slow
def test_reward_stage_equals_trl_and_its_model_opens(tmp_path, setup, tokenizer_dir):
    section = {"data": [str(setup["data"])], "init_from": str(setup["source"]), "train": _train()}
    run = StageRun(run_config(tmp_path, "rm", ["reward"], {"reward": section}), "reward")
    assert run.run() == [0], run.logs()
    rows = run.metrics()
    data, tok = _pairs(tokenizer_dir, setup["data"], tmp_path)
    order = [data.pairs[i] for i in _order(len(data.pairs))]
    head = torch.randn((1, 32), generator=torch.Generator().manual_seed(SEED)) * 0.05  # as the stage draws it
    golden = reward_run(tiny_weights(setup["model"], tokenizer_dir), head, order, tmp_path / "trl", steps=STEPS,
                        batch=GLOBAL, lr=LR)
    for step in range(STEPS):
        assert rows[step]["loss"] == pytest.approx(golden["losses"][step], rel=1e-5), step
        g = golden["metrics"][step]
        scale = max(abs(g["min_reward"]), abs(g["max_reward"]))
        for key in REWARD_METRICS:
            assert rows[step][key] == pytest.approx(g[key], rel=1e-5, abs=1e-5 * scale), (step, key)

    rm = load_reward_model(run.stage_dir)
    assert reward_model_tokenizer(run.stage_dir).token_id("<|im_end|>") == tok.token_id("<|im_end|>")
    b = collate_pairs(order[:GLOBAL], pad_id_of(tok))
    hf = golden["model"].eval()
    with torch.no_grad():
        theirs = hf(input_ids=b.input_ids, attention_mask=(torch.arange(b.input_ids.shape[1]) < b.lengths[:, None])
                    .long()).logits.squeeze(-1)
    assert torch.allclose(rm.score(b.input_ids, b.lengths), theirs, rtol=1e-4, atol=1e-5)
