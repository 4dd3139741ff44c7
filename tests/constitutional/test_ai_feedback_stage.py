"""The ai_feedback stage end to end: pairs in the DPO/reward contract, labels with both orders' probabilities,
prompts taken from the constitutional stage, degenerate pairs quarantined by reason."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from lmhpc.constitutional import feedback
from lmhpc.constitutional.constitution import SHIPPED_PROMPTS
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.runner import run_stage
from tests.constitutional.conftest import save_model, stage_files, successor_model, write_run_config

pytestmark = pytest.mark.slow

PAIR_KEYS = {"prompt", "chosen", "rejected", "principle", "p_chosen", "probabilities"}


def chain_sections(model_dir) -> dict:
    return {"constitutional": {"init_from": str(model_dir), "max_prompts": 8, "chunk_size": 4, "rounds": 1,
                                   "sampling": {"max_new_tokens": 8}},
                "ai_feedback": {"init_from": str(model_dir), "chunk_size": 3, "sampling": {"max_new_tokens": 10},
                                "principles": ["harm", "honesty", "privacy"]}}


@pytest.fixture(scope="module")
def chained(tmp_path_factory, model_dir):
    """constitutional, then ai_feedback on the prompts it chose."""
    base = tmp_path_factory.mktemp("aif")
    sections = chain_sections(model_dir)
    cfg = write_run_config(base, "chain", ["constitutional", "ai_feedback"], sections)
    assert run_stage(cfg, "constitutional") == 0
    assert run_stage(cfg, "ai_feedback") == 0
    return cfg


def test_pairs_follow_the_preference_contract(chained):
    stage = chained.run_dir / "ai_feedback"
    chosen = (chained.run_dir / "constitutional" / "prompts.jsonl").read_text().splitlines()
    constitutional_prompts = [json.loads(line)["prompt"] for line in chosen]
    labels = [json.loads(line) for line in (stage / "labels.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in labels) == sorted(constitutional_prompts)
    pairs = [json.loads(line) for line in (stage / "pairs.jsonl").read_text().splitlines()]
    ok = [r for r in labels if r["status"] == "ok"]
    assert len(pairs) == len(ok) > 0
    for pair, row in zip(pairs, ok):
        assert set(pair) == PAIR_KEYS
        assert pair["principle"] in ("harm", "honesty", "privacy") and pair["principle"] == row["principle"]
        assert pair["prompt"] == row["prompt"] and pair["chosen"] != pair["rejected"]
        first = row["label"] == "answer_1"
        assert (pair["chosen"], pair["rejected"]) == (tuple(row["answers"]) if first else tuple(row["answers"][::-1]))
        ab, ba = row["orders"]["ab"], row["orders"]["ba"]
        assert ab["p_A"] + ab["p_B"] == pytest.approx(1) and ba["p_A"] + ba["p_B"] == pytest.approx(1)
        # answer 1 is (A) in the first order and (B) in the second: its probability is the mean of the two
        assert row["p_answer_1"] == pytest.approx((ab["p_A"] + ba["p_B"]) / 2)
        assert pair["p_chosen"] > 0.5
        as_a, as_b = pair["probabilities"]["chosen_as_A"], pair["probabilities"]["chosen_as_B"]
        assert pair["p_chosen"] == pytest.approx((as_a + as_b) / 2)
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == 8 == stats["docs_out"] + stats["quarantined"] and stats["pairs"] == len(pairs)
    assert 0 <= stats["mean_p_first_position"] <= 1 and stats["questions"] == 2 * len(ok)


def test_degenerate_answers_are_quarantined_by_reason(tmp_path, chat_tokenizer_dir, chat_tokenizer):
    """A model that ends every answer at once (empty answers), and one that always says the same word (identical
    answers): no pair, every prompt quarantined with its reason."""
    tok = chat_tokenizer
    end = tok.token_id("<|im_end|>")
    quiet = save_model(successor_model(tok.vocab_size, {}, default=end), chat_tokenizer_dir, tmp_path / "quiet")
    word = tok.encode("river")[-1]
    echo = save_model(successor_model(tok.vocab_size, {word: end}, default=word), chat_tokenizer_dir,
                      tmp_path / "echo")
    for name, model, reason in (("quiet", quiet, "empty_answer"), ("echo", echo, "identical_answers")):
        cfg = write_run_config(tmp_path, name, ["ai_feedback"], {"ai_feedback": {
            "init_from": str(model), "prompts": [str(SHIPPED_PROMPTS)], "max_prompts": 5, "chunk_size": 2,
            "sampling": {"max_new_tokens": 6}}})
        assert run_stage(cfg, "ai_feedback") == 0
        stage = cfg.run_dir / "ai_feedback"
        assert (stage / "pairs.jsonl").read_text() == ""
        stats = json.loads((stage / "stats.json").read_text())
        assert stats["quarantined_by_reason"] == {reason: 5} and stats["docs_out"] == 0
        entries = [json.loads(line) for line in (stage / "quarantine" / "pairs.jsonl").read_text().splitlines()]
        assert [e["reason"] for e in entries] == [reason] * 5
        assert all(e["record"]["answers"] is not None for e in entries)


def test_a_wide_tie_margin_quarantines_every_pair_as_a_tie(tmp_path, model_dir):
    cfg = write_run_config(tmp_path, "ties", ["ai_feedback"], {"ai_feedback": {
        "init_from": str(model_dir), "prompts": [str(SHIPPED_PROMPTS)], "max_prompts": 4,
        "sampling": {"max_new_tokens": 6}, "tie_margin": 0.4999}})
    assert run_stage(cfg, "ai_feedback") == 0
    stats = json.loads((cfg.run_dir / "ai_feedback" / "stats.json").read_text())
    assert stats["quarantined_by_reason"] == {"tie": 4}


def test_same_seed_same_files_and_resume_after_preemption(chained, tmp_path, model_dir, monkeypatch):
    """The same config in another folder gives the same files; a run preempted after its first unit resumes to
    them too."""
    cfg = write_run_config(tmp_path, "chain", ["constitutional", "ai_feedback"], chain_sections(model_dir))
    shutil.copytree(chained.run_dir / "constitutional", cfg.run_dir / "constitutional")
    real = feedback.process_unit

    def signal_after_first_unit(ctx, index, unit):
        out = real(ctx, index, unit)
        os.kill(os.getpid(), signal.SIGUSR1)
        return out

    monkeypatch.setattr(feedback, "process_unit", signal_after_first_unit)
    assert run_stage(cfg, "ai_feedback") == REQUEUE_EXIT_CODE
    stage = cfg.run_dir / "ai_feedback"
    assert sorted(p.name for p in (stage / "_units").iterdir()) == ["000000.json"] and not (stage / "DONE").exists()
    monkeypatch.setattr(feedback, "process_unit", real)
    assert run_stage(cfg, "ai_feedback") == 0
    assert stage_files(stage) == stage_files(chained.run_dir / "ai_feedback")
