"""The sft stage end to end, as separate processes: loss falls on the shipped chat set, the result opens with
lmhpc.exchange, preemption → resume gives bitwise-identical losses, FSDP2 on 2 ranks equals 1 rank, LoRA."""

from __future__ import annotations

import json
import signal
import time

import pytest
import torch

from lmhpc.exchange.load import load_model
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.train.checkpoint import complete_steps
from tests.align.conftest import CHAT_DATA, StageRun, run_config

RTOL = 2e-4  # the pretrain parity tolerance


def _sft(source, **kw) -> dict:
    train = {"steps": 30, "lr": 6e-3, "warmup_steps": 2, "micro_batch_size": 4, "global_batch_size": 8,
             "max_len": 160, "device": "cpu", "checkpoint_interval": 0, **kw.pop("train", {})}
    return {"data": [str(CHAT_DATA / "chat.jsonl")], "init_from": str(source), "train": train, **kw}


def _run(tmp_path, name, section, world=1) -> StageRun:
    return StageRun(run_config(tmp_path, name, ["sft"], {"sft": section}, world), "sft", world)


def test_sft_loss_falls_on_the_chat_set_and_the_model_opens(tmp_path, tiny_source):
    bad = tmp_path / "extra.jsonl"  # two bad records beside the chat set: quarantined by reason
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n{broken\n')
    section = _sft(tiny_source)
    section["data"].append(str(bad))
    run = _run(tmp_path, "sft", section)
    assert run.run() == [0], run.logs()
    rows = run.metrics()
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "lr", "grad_norm"):
        assert key in rows[-1], key
    first, last = sum(r["loss"] for r in rows[:3]) / 3, sum(r["loss"] for r in rows[-3:]) / 3
    assert last < 0.7 * first, (first, last)
    assert rows[-1]["mean_token_accuracy"] > rows[0]["mean_token_accuracy"]
    assert all(b["num_tokens"] > a["num_tokens"] for a, b in zip(rows, rows[1:]))  # cumulative
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["docs_in"] == 242 and stats["docs_out"] == 240 and stats["quarantined"] == 2
    assert stats["quarantine_reasons"] == {"invalid_json": 1, "no_assistant_turn": 1}
    from lmhpc.data.quarantine import read_quarantine

    reasons = sorted(e["reason"] for e in read_quarantine(run.stage_dir / "quarantine/chat.jsonl"))
    assert reasons == ["invalid_json", "no_assistant_turn"]
    loaded = load_model(run.stage_dir)
    assert loaded.tokenizer.token_id("<|im_start|>") is not None
    before = load_model(tiny_source).model
    assert not torch.equal(loaded.model.layers["0"].attention.wq.weight, before.layers["0"].attention.wq.weight)


def _interrupt(run: StageRun, after_rows: int, total: int) -> int:
    procs = run.start()
    path = run.stage_dir / "metrics.jsonl"
    try:
        deadline = time.time() + 240
        while not path.exists() or len(path.read_text().splitlines()) < after_rows:
            assert all(p.poll() is None for p in procs), f"the job ended before the signal\n{run.logs()}"
            assert time.time() < deadline, run.logs()
            time.sleep(0.02)
        procs[0].send_signal(signal.SIGUSR1)
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [REQUEUE_EXIT_CODE] * run.world, (codes, run.logs())
    saved = complete_steps(run.stage_dir / "checkpoints")[-1]
    assert after_rows <= saved < total
    return saved


def test_preemption_resumes_with_bitwise_identical_losses(tmp_path, tiny_source):
    """Packing, LoRA with dropout (RNG) and periodic checkpoints: the resume must pick the preemption save."""
    section = _sft(tiny_source, packing=True, lora={"rank": 4, "alpha": 8, "dropout": 0.1,
                                                    "targets": ["wq", "wv", "w1", "w2"]},
                   train={"steps": 24, "checkpoint_interval": 10, "global_batch_size": 4, "micro_batch_size": 2,
                          "max_len": 160})
    reference = _run(tmp_path, "reference", section)
    assert reference.run() == [0], reference.logs()
    run = _run(tmp_path, "interrupted", section)
    saved = _interrupt(run, 4, 24)
    assert run.run() == [0], run.logs()
    assert run.losses() == reference.losses()  # exact, every step
    assert [r["step"] for r in run.metrics()] == list(range(1, 25))
    assert f"resumed from checkpoint step {saved}" in (run.run_dir / "sft-rank0.log").read_text()
    # the saved models are equal too (merged LoRA)
    a, b = load_model(run.stage_dir).model, load_model(reference.stage_dir).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_fsdp2_on_two_ranks_equals_one_rank(tmp_path, tiny_source):
    section = _sft(tiny_source, train={"steps": 4, "micro_batch_size": 2, "global_batch_size": 4})
    one = _run(tmp_path, "one", section)
    assert one.run() == [0], one.logs()
    two = _run(tmp_path, "two", section, world=2)
    assert two.run() == [0, 0], two.logs()
    assert two.losses() == pytest.approx(one.losses(), rel=RTOL)
    assert [r["num_tokens"] for r in two.metrics()] == [r["num_tokens"] for r in one.metrics()]
    a, b = load_model(two.stage_dir).model, load_model(one.stage_dir).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-5), name


@pytest.mark.slow
def test_fsdp2_with_lora_on_two_ranks_equals_one_rank(tmp_path, tiny_source):
    section = _sft(tiny_source, packing=True, lora={"rank": 4, "targets": ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]},
                   train={"steps": 4, "micro_batch_size": 1, "global_batch_size": 4, "max_len": 160})
    one = _run(tmp_path, "one", section)
    assert one.run() == [0], one.logs()
    two = _run(tmp_path, "two", section, world=2)
    assert two.run() == [0, 0], two.logs()
    assert two.losses() == pytest.approx(one.losses(), rel=RTOL)
    a, b = load_model(two.stage_dir).model, load_model(one.stage_dir).model
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, rtol=1e-3, atol=1e-5), name


def test_constitutional_revisions_join_the_data_when_chained(tmp_path, tiny_source):
    """A run chaining constitutional → sft: sft also trains on ``<run>/constitutional/sft.jsonl``."""
    section = _sft(tiny_source, data=[], train={"steps": 2, "global_batch_size": 4})
    config = run_config(tmp_path, "cai", ["constitutional", "sft"], {"sft": section})
    run = StageRun(config, "sft")
    cai = run.run_dir / "constitutional"
    cai.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": f"How do I pick lock {i}?"},
                          {"role": "assistant", "content": "I can't help with that, but a locksmith can."}]}
            for i in range(6)]
    (cai / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (cai / "DONE").write_text("{}\n")
    assert run.run() == [0], run.logs()
    stats = json.loads((run.stage_dir / "stats.json").read_text())
    assert stats["data_files"] == [str(cai / "sft.jsonl")]
    assert stats["docs_in"] == stats["docs_out"] == 6
