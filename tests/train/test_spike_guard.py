"""Loss spike guard on a real trainer: a blown-up step is skipped (no update), or rolled back to the
newest checkpoint with the data moving on."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from lmhpc.config import load_config
from lmhpc.data.blend import read_blend
from lmhpc.model.transformer import Transformer
from lmhpc.train.checkpoint import CheckpointManager
from lmhpc.train.config import SpikeGuardConfig
from lmhpc.train.data import GlobalBatches, TokenIds, tokenizer_vocab
from lmhpc.train.loop import SpikeGuard, Trainer, TrainingDiverged
from lmhpc.train.optim import build_optimizer
from lmhpc.train.parallel import ParallelDims
from lmhpc.train.stage import _rollback
from tests.train.fixtures import tiny_pretrain


@pytest.fixture
def trainer_parts(make_config, prepared_inputs, tmp_path):
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        def build(policy: str):
            cfg = load_config(make_config({"run": {"stages": ["pretrain"]}, "pretrain": tiny_pretrain(
                spike={"policy": policy, "min_steps": 3, "window": 5, "factor": 2.0}, checkpoint={"interval": 2},
                train={"steps": 20})})).pretrain
            prefixes, weights, eod = read_blend(prepared_inputs / "tokenize" / "blend.json")
            vocab = tokenizer_vocab(prepared_inputs / "tokenizer" / "tokenizer.model")[0]
            vocab = -(-vocab // 32) * 32
            dims = ParallelDims.build(cfg.parallel, 1, 0, "cpu")
            data = GlobalBatches(prefixes, weights, 32, 4, 80, 1, tmp_path / "cache", TokenIds(vocab, eod))
            args = dataclasses.replace(cfg.model, vocab_size=vocab)
            torch.manual_seed(0)
            model = Transformer(args)
            opt = build_optimizer(model, args, cfg.optimizer)
            return Trainer(cfg, dims, [model], [opt], data, torch.device("cpu")), model, opt
        yield build
    finally:
        dist.destroy_process_group()


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _blow_up(model):
    with torch.no_grad():
        model.output.weight.mul_(200.0)


def test_spike_is_skipped(trainer_parts):
    trainer, model, _ = trainer_parts("skip")
    for step in range(5):
        assert trainer.train_step(step, step).applied
    _blow_up(model)
    before = _snapshot(model)
    outcome = trainer.train_step(5, 5)
    assert not outcome.applied and not outcome.rollback
    assert outcome.loss > 2.0 * sorted(trainer.guard.history)[len(trainer.guard.history) // 2]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no update applied
    assert trainer.guard.skipped == 1 and trainer.guard.consecutive == 1


def test_spike_rolls_back_to_the_newest_checkpoint(trainer_parts, tmp_path):
    trainer, model, opt = trainer_parts("rollback")
    ckpt = CheckpointManager(tmp_path / "ckpt", [model], [opt], keep_last=2)
    for step in range(4):
        trainer.train_step(step, step)
    ckpt.save(4, {"step": 4, "data_step": 4})
    at_checkpoint = _snapshot(model)
    trainer.train_step(4, 4)
    _blow_up(model)
    outcome = trainer.train_step(5, 5)
    assert outcome.rollback and not outcome.applied
    assert _rollback(ckpt, tmp_path / "ckpt", 0) == 4
    restored = model.state_dict()
    assert all(torch.equal(at_checkpoint[k], restored[k]) for k in at_checkpoint)
    assert trainer.train_step(4, 6).applied  # training goes on from step 4 with later data


def test_guard_rules():
    guard = SpikeGuard(SpikeGuardConfig(policy="skip", factor=3.0, window=4, min_steps=2, max_consecutive=2))
    assert guard.is_spike(float("nan"), 1.0) and guard.is_spike(1.0, float("inf"))
    assert not guard.is_spike(100.0, 1.0)  # no history yet
    for loss in (2.0, 2.1, 1.9, 2.0, 2.2):
        guard.accept(loss)
    assert len(guard.history) == 4
    assert guard.is_spike(6.5, 1.0) and not guard.is_spike(5.9, 1.0)
    guard.reject(1, 7.0, 1.0)
    with pytest.raises(TrainingDiverged):
        guard.reject(2, 7.0, 1.0)
    off = SpikeGuard(SpikeGuardConfig(policy="off"))
    assert not off.is_spike(float("nan"), 1.0)
