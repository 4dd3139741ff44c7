"""The pretrain stage and model exchange end to end: ``load_model`` on a stage folder finds the newest complete
step, the model's shape and the run's tokenizer; a new run starts from a consolidated folder
(``pretrain.init_from``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lmhpc.exchange import load_model, read_weights
from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.train.checkpoint import TRAIN_STATE
from tests.train.conftest import prepared_inputs, pretrain_run  # noqa: F401  (fixtures)
from tests.train.fixtures import tiny_pretrain


@pytest.mark.slow
def test_a_run_exports_and_another_starts_from_it(pretrain_run, tmp_path: Path) -> None:  # noqa: F811
    first = pretrain_run("first", tiny_pretrain(train={"steps": 4}, checkpoint={"interval": 2, "keep_last": 2}))
    assert first.run() == [0], first.logs()
    step = first.stage_dir / "checkpoints" / "step-4"
    state = json.loads((step / TRAIN_STATE).read_text())
    assert state["model_args"]["vocab_size"] == 96 and state["tokenizer"].endswith("tokenizer.model")

    loaded = load_model(first.stage_dir)  # the stage folder: its newest complete step
    assert loaded.args.vocab_size == 96 and loaded.args.dim == 64
    ids = loaded.tokenizer.encode("the quick brown fox jumps over a lazy dog")
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(ids[1:]))
    # learned something in 4 steps: ln(96) = 4.56 for a uniform guess, the run's own step-1 loss
    assert loss.item() < math.log(96) - 0.25

    consolidated = write_consolidated(read_weights(step), tmp_path / "consolidated")
    second = pretrain_run("second", tiny_pretrain(train={"steps": 1}, optimizer={"lr": 1e-9, "warmup_steps": 0},
                                                  init_from=str(consolidated)))
    assert second.run() == [0], second.logs()
    start, after = read_weights(consolidated).state, read_weights(second.stage_dir).state
    assert sorted(start) == sorted(after)
    # one step at lr 1e-9 moves no weight by more than ~1e-9: the run started from the consolidated weights
    assert max((start[k] - after[k]).abs().max().item() for k in start) < 1e-6


@pytest.mark.slow
def test_init_from_refuses_another_shape(pretrain_run, tmp_path: Path, sp_tokenizer: Path) -> None:  # noqa: F811
    from tests.exchange.conftest import tiny_weights

    _, weights = tiny_weights(sp_tokenizer)  # 800 tokens, not the run's 96
    consolidated = write_consolidated(weights, tmp_path / "other")
    run = pretrain_run("other", tiny_pretrain(train={"steps": 1}, optimizer={"warmup_steps": 0},
                                              init_from=str(consolidated)))
    codes = run.run()
    assert "model.vocab_size: 800" in run.logs(), run.logs()
    assert codes == [1]


def test_init_from_that_does_not_exist_fails_before_anything_runs(pretrain_run, tmp_path: Path) -> None:  # noqa: F811
    run = pretrain_run("missing", tiny_pretrain(init_from=str(tmp_path / "nowhere")))
    assert run.run() == [2]
    assert "pretrain.init_from" in run.logs() and "does not exist" in run.logs()
