"""The alignment training core, in process on one rank: log-prob helpers, document attention, the loop's global
normalisation, checkpoints that lmhpc.exchange opens, extra modules, LoRA, and resume after a preemption."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmhpc.align.config import AlignTrainConfig, LoRAConfig
from lmhpc.align.trainer import (
    AlignTrainer,
    BatchSlot,
    distributed,
    document_attention,
    packed_positions,
    sequence_logps,
    token_logps,
    use_document_attention,
)
from lmhpc.config import build_root
from lmhpc.context import StageContext
from lmhpc.exchange.load import load_model
from lmhpc.launch.preempt import Preempted
from lmhpc.train.metrics import read_metrics
from tests.align.conftest import tiny_args

SEQ = 24


def _ctx(tmp_path, name: str = "core") -> StageContext:
    cfg = build_root({"run": {"name": name, "runs_dir": str(tmp_path / "runs"), "stages": [], "seed": 3},
                      "wandb": {"mode": "disabled"}})
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    return StageContext(cfg, "core")


def _train_cfg(**kw) -> AlignTrainConfig:
    base = {"steps": 6, "lr": 3e-3, "warmup_steps": 1, "micro_batch_size": 2, "global_batch_size": 4,
            "max_len": SEQ, "device": "cpu", "checkpoint_interval": 0}
    return AlignTrainConfig(**{**base, **kw})


def _data(n: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randint(3, 60, (n, SEQ), generator=g)


def _lm_task(data: torch.Tensor, head: nn.Module | None = None):
    def batch(slot: BatchSlot):
        return {"tokens": data[slot.indices(len(data))]}

    def loss_fn(model, b):
        tokens = b["tokens"]
        logps = token_logps(model, tokens)
        loss = -logps.sum()
        metrics = {"num_tokens": float(logps.numel()), "mean_logp": (float(logps.detach().sum()), logps.numel())}
        if head is not None:  # a scalar head trained on top: pushes its output to 1
            value = head(torch.ones(tokens.shape[0], 4))
            loss = loss + ((value - 1) ** 2).sum()
        return loss, logps.numel(), metrics

    return batch, loss_fn


def _fit(ctx, cfg, source, stop_at: int | None = None, lora=None, head=None):
    data = _data()
    with distributed(ctx, cfg) as device:
        trainer = AlignTrainer(ctx, cfg, source, device, lora=lora,
                               extra_modules={"head": head} if head is not None else None)
        batch, loss_fn = _lm_task(data, trainer.extras["head"] if head is not None else None)

        def after(step, row):
            if stop_at is not None and step == stop_at:
                ctx.flag.set("test")

        return trainer, trainer.fit(batch, loss_fn, cumulative=("num_tokens",), after_step=after)


def test_token_logps_and_sequence_logps_match_log_softmax():
    torch.manual_seed(0)
    from lmhpc.model.transformer import Transformer

    model = Transformer(tiny_args(vocab_size=64))
    tokens = torch.randint(0, 64, (3, 10))
    ref = F.log_softmax(model(tokens)[:, :-1].float(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert torch.allclose(token_logps(model, tokens), ref, atol=1e-5)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[:, 4:] = True
    assert torch.allclose(sequence_logps(model, tokens, mask), ref[:, 4:].sum(-1), atol=1e-5)
    assert torch.allclose(sequence_logps(model, tokens, mask, average=True), ref[:, 4:].mean(-1), atol=1e-5)


def test_packed_rows_attend_within_their_document():
    torch.manual_seed(1)
    from lmhpc.model.transformer import Transformer

    model = Transformer(tiny_args(vocab_size=64))
    use_document_attention(model)
    docs = [torch.randint(0, 64, (n,)) for n in (5, 9, 4)]
    packed = torch.cat(docs + [torch.zeros(2, dtype=torch.long)])[None]
    positions = packed_positions([5, 9, 4], 20)[None]
    assert positions[0, :6].tolist() == [0, 1, 2, 3, 4, 0]
    logits = model(packed, positions)[0]
    start = 0
    for doc in docs:
        alone = model(doc[None])[0]
        assert torch.allclose(logits[start:start + len(doc)], alone, atol=1e-5)
        start += len(doc)
    # without per-row positions it is plain causal attention
    q = k = v = torch.randn(1, 2, 6, 8)
    assert torch.allclose(document_attention(q, k, v, None),
                          F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_slot_indices_cover_each_epoch_once():
    slots = [BatchSlot(s, m, 2, 3, r, 2, seed=5) for s in range(2) for r in range(2) for m in range(2)]
    drawn = [i for slot in slots for i in slot.indices(12)]
    assert sorted(drawn[:12]) == list(range(12)) and sorted(drawn[12:]) == list(range(12))
    assert drawn[:12] != drawn[12:]  # another permutation per epoch
    assert BatchSlot(1, 0, 2, 3, 0, 2, 5).indices(12) == slots[4].indices(12)


def test_fit_trains_saves_an_openable_model_and_resumes_bitwise(tmp_path, tiny_source):
    ref_trainer, ref_stats = _fit(_ctx(tmp_path / "a"), _train_cfg(), tiny_source)
    ref_rows = read_metrics(ref_trainer.ctx.stage_dir / "metrics.jsonl")
    losses = [r["loss"] for r in ref_rows]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert ref_rows[-1]["num_tokens"] == 6 * 4 * (SEQ - 1)  # cumulative
    assert ref_stats["steps"] == 6 and ref_stats["final_loss"] == losses[-1]
    # the stage folder opens as a model equal to the trained one, with its tokenizer
    loaded = load_model(ref_trainer.ctx.stage_dir)
    for name, param in ref_trainer.model.named_parameters():
        assert torch.equal(loaded.model.state_dict()[name], param.detach()), name
    assert loaded.tokenizer.token_id("<|im_start|>") is not None

    ctx = _ctx(tmp_path / "b")
    with pytest.raises(Preempted):
        _fit(ctx, _train_cfg(), tiny_source, stop_at=2)
    ctx.flag = type(ctx.flag)()
    _, stats = _fit(ctx, _train_cfg(), tiny_source)
    assert stats["resumed_from_step"] == 2
    rows = read_metrics(ctx.stage_dir / "metrics.jsonl")
    assert [r["loss"] for r in rows] == losses  # bitwise
    assert [r["num_tokens"] for r in rows] == [r["num_tokens"] for r in ref_rows]


def test_extra_modules_train_and_resume(tmp_path, tiny_source):
    def head():
        torch.manual_seed(4)
        return nn.Linear(4, 1)

    ref_trainer, _ = _fit(_ctx(tmp_path / "a"), _train_cfg(), tiny_source, head=head())
    ref = read_metrics(ref_trainer.ctx.stage_dir / "metrics.jsonl")
    ctx = _ctx(tmp_path / "b")
    with pytest.raises(Preempted):
        _fit(ctx, _train_cfg(), tiny_source, stop_at=3, head=head())
    ctx.flag = type(ctx.flag)()
    trainer, _ = _fit(ctx, _train_cfg(), tiny_source, head=head())
    assert [r["loss"] for r in read_metrics(ctx.stage_dir / "metrics.jsonl")] == [r["loss"] for r in ref]
    assert torch.equal(trainer.extras["head"].weight, ref_trainer.extras["head"].weight)
    assert not torch.equal(trainer.extras["head"].weight, head().weight)  # it trained


def test_lora_trains_adapters_only_and_saves_the_merged_model(tmp_path, tiny_source):
    lora = LoRAConfig(rank=4, alpha=8, targets=["wq", "wv", "w2"])
    base = load_model(tiny_source).model
    trainer, _ = _fit(_ctx(tmp_path / "a"), _train_cfg(), tiny_source, lora=lora)
    # base weights untouched, adapters trained
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), base.state_dict()[name]), name
    assert trainer.policy_opt is None
    # the saved model is the merged one: same outputs as base + adapters
    merged = load_model(trainer.ctx.stage_dir).model
    tokens = _data(3)
    with torch.no_grad():
        trainer.model.eval()
        trainer.extras.eval()
        assert torch.allclose(merged(tokens), trainer.model(tokens), atol=1e-5)
        assert not torch.allclose(merged(tokens), base(tokens), atol=1e-4)
    # resume with LoRA: bitwise
    ref = [r["loss"] for r in read_metrics(trainer.ctx.stage_dir / "metrics.jsonl")]
    ctx = _ctx(tmp_path / "b")
    with pytest.raises(Preempted):
        _fit(ctx, _train_cfg(), tiny_source, stop_at=3, lora=lora)
    ctx.flag = type(ctx.flag)()
    _fit(ctx, _train_cfg(), tiny_source, lora=lora)
    assert [r["loss"] for r in read_metrics(ctx.stage_dir / "metrics.jsonl")] == ref


def test_global_normalisation_is_independent_of_the_micro_batch_split(tmp_path, tiny_source):
    a, _ = _fit(_ctx(tmp_path / "a"), _train_cfg(steps=2, micro_batch_size=4, global_batch_size=4), tiny_source)
    b, _ = _fit(_ctx(tmp_path / "b"), _train_cfg(steps=2, micro_batch_size=1, global_batch_size=4), tiny_source)
    la = [r["loss"] for r in read_metrics(a.ctx.stage_dir / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(b.ctx.stage_dir / "metrics.jsonl")]
    assert lb == pytest.approx(la, rel=1e-5)


def test_bf16_autocast_trains_close_to_fp32(tmp_path, tiny_source):
    a, _ = _fit(_ctx(tmp_path / "a"), _train_cfg(steps=3), tiny_source)
    b, _ = _fit(_ctx(tmp_path / "b"), _train_cfg(steps=3, precision="bf16"), tiny_source)
    la = [r["loss"] for r in read_metrics(a.ctx.stage_dir / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(b.ctx.stage_dir / "metrics.jsonl")]
    assert lb != la and lb == pytest.approx(la, rel=0.03)
    assert load_model(b.ctx.stage_dir).model.layers["0"].attention.wq.weight.dtype == torch.float32
