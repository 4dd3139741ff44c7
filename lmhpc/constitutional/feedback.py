"""The ``ai_feedback`` stage: preference pairs labelled by the model under the constitution's principles.

An array stage over chunks of the prompts (the constitutional stage's ``prompts.jsonl``, or ``ai_feedback.prompts``
files): a unit samples two answers to each of its prompts in one batch (seeded, temperature > 0), then asks the
model which is better under a principle sampled for that prompt (:mod:`lmhpc.constitutional.choice`), in both
orders, all questions scored in batched forward passes. Seeds depend on the unit and the prompt's position only,
so tasks and requeues give the same files.

Outputs (``<run>/ai_feedback/``):
- ``pairs.jsonl``: ``{"prompt", "chosen", "rejected", "principle", "p_chosen", "probabilities"}`` — the
  preference data of the reference, dpo and reward stages (``prompt`` is the user's text, without a template);
- ``labels.jsonl``: every prompt with both answers, both orders' log-probabilities and probabilities, its label
  and status;
- ``quarantine/pairs.jsonl``: prompts with no usable pair, by reason (an empty answer, two identical answers, a
  tie, a question longer than the model's context).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from lmhpc.config import ConfigError
from lmhpc.constitutional.choice import ScoredQuestion, question, question_length, score_questions
from lmhpc.constitutional.common import (
    PROMPTS_FILE,
    QUARANTINE_DIR,
    chunk_file,
    chunk_range,
    chunk_units,
    derive_seed,
    frozen_prompts,
    load_stage_model,
    merge_chunk_files,
    normalized,
    sampled_principle,
    selection_record,
    shown_paths,
    write_jsonl,
)
from lmhpc.constitutional.config import FEEDBACK_MODELS, AIFeedbackConfig
from lmhpc.constitutional.constitution import (
    Principle,
    constitution_path,
    load_constitution,
    prompt_paths,
    read_prompts,
    select_prompts,
)
from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine

log = logging.getLogger("lmhpc.ai_feedback")

PAIRS = "pairs.jsonl"
LABELS = "labels.jsonl"
PAIR_QUARANTINE = "pairs.jsonl"


def principles(ctx: StageContext, cfg: AIFeedbackConfig) -> tuple[Principle, ...]:
    constitution = load_constitution(constitution_path(cfg.constitution, ctx.cfg.path), "ai_feedback.constitution")
    return constitution.select(cfg.principles, "ai_feedback.principles")


def prompts(ctx: StageContext) -> list[str]:
    cfg: AIFeedbackConfig = ctx.cfg.ai_feedback
    if cfg.prompts:
        paths, key = prompt_paths(cfg.prompts, ctx.cfg.path), cfg.prompt_key
    else:
        paths, key = [ctx.stage_output("constitutional") / PROMPTS_FILE], "prompt"

    def build(quarantine: Quarantine) -> tuple[list[str], dict[str, Any]]:
        found = read_prompts(paths, key, "ai_feedback.prompts", quarantine)
        return (select_prompts(found, ctx.cfg.run.seed, cfg.max_prompts, ctx.stage),
                {"files": shown_paths(ctx, paths), "usable_prompts": len(found)})

    return frozen_prompts(ctx, build)


def preflight(cfg: Any) -> list[str]:
    """Problems with the constitution, the principles or the prompt files, each naming its key."""
    section: AIFeedbackConfig = cfg.ai_feedback
    try:
        constitution = load_constitution(constitution_path(section.constitution, cfg.path), "ai_feedback.constitution")
        constitution.select(section.principles, "ai_feedback.principles")
        if section.prompts:
            read_prompts(prompt_paths(section.prompts, cfg.path), section.prompt_key, "ai_feedback.prompts", None)
    except ConfigError as e:
        return [f"{e.key}: {str(e).split(': ', 1)[1]}"]
    return []


def units(ctx: StageContext) -> list[str]:
    """Chunks of the prompt list. The constitution and the prompts are checked here, before any unit runs."""
    cfg: AIFeedbackConfig = ctx.cfg.ai_feedback
    principles(ctx, cfg)
    return chunk_units(len(prompts(ctx)), cfg.chunk_size)


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    """Sample two answers per prompt, judge them in both orders, write the unit's chunk files."""
    from lmhpc.exchange.source import model_source
    from lmhpc.infer.generate import Generator

    cfg: AIFeedbackConfig = ctx.cfg.ai_feedback
    chosen_principles = principles(ctx, cfg)
    everything = prompts(ctx)
    seed = ctx.cfg.run.seed
    loaded = load_stage_model(ctx, model_source(ctx, cfg.init_from, FEEDBACK_MODELS), cfg.device, cfg.dtype,
                              cfg.threads)
    gen = Generator(loaded.model, loaded.tokenizer)
    limit = loaded.args.max_seq_len
    s = cfg.sampling
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for i in chunk_range(unit):
        p = sampled_principle(chosen_principles, seed, ctx.stage, "principle", i)
        rows.append({"index": i, "prompt": everything[i], "principle": p.id, "preference": p.preference,
                     "answers": None, "finish": None, "orders": None, "p_answer_1": None, "label": None,
                     "status": "ok"})
    for row in rows:
        length = len(gen.encode([{"role": "user", "content": row["prompt"]}], chat=True, add_bos=cfg.add_bos))
        if length + s.max_new_tokens > limit:
            row["status"] = "too_long"
    live = [r for r in rows if r["status"] == "ok"]
    chats = [[{"role": "user", "content": r["prompt"]}] for r in live]
    answers = gen.generate(chats + chats, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                           top_p=s.top_p, repetition_penalty=s.repetition_penalty, chat=True, add_bos=cfg.add_bos,
                           seed=derive_seed(seed, ctx.stage, unit, "answers")) if live else []
    tokens = sum(len(c.token_ids) for c in answers)
    generation_s = time.perf_counter() - started
    for k, row in enumerate(live):
        first, second = answers[k], answers[k + len(live)]
        row["answers"] = [first.text.strip(), second.text.strip()]
        row["finish"] = [first.finish_reason, second.finish_reason]
        if not all(row["answers"]):
            row["status"] = "empty_answer"
        elif normalized(row["answers"][0]) == normalized(row["answers"][1]):
            row["status"] = "identical_answers"
    contexts: list[str] = []
    judged = []
    for row in live:
        if row["status"] != "ok":
            continue
        a1, a2 = row["answers"]
        pair = [question(row["prompt"], row["preference"], a1, a2), question(row["prompt"], row["preference"], a2, a1)]
        if max(question_length(loaded.tokenizer, q, cfg.add_bos, cfg.judge_chat) for q in pair) > limit:
            row["status"] = "too_long"
            continue
        contexts += pair
        judged.append(row)
    scored = score_questions(loaded.model, loaded.tokenizer, contexts, cfg.add_bos, cfg.judge_chat,
                             cfg.score_batch_size)
    for k, row in enumerate(judged):
        label_row(row, scored[2 * k], scored[2 * k + 1], cfg.tie_margin)
    seconds = time.perf_counter() - started
    return _write_chunk(ctx, index, rows, judged, tokens, generation_s, seconds)


def label_row(row: dict[str, Any], ab: ScoredQuestion, ba: ScoredQuestion, tie_margin: float) -> None:
    """Record both orders' scores in ``row`` and label it: answer 1 is (A) in the first order (``ab``) and (B) in
    the second (``ba``); its probability of being better is the mean of the two, which cancels a preference for a
    position. Within ``tie_margin`` of 0.5 the row is a tie."""
    row["orders"] = {"ab": {"logprob_A": ab.logprob_a, "logprob_B": ab.logprob_b, "p_A": ab.p_a, "p_B": ab.p_b},
                     "ba": {"logprob_A": ba.logprob_a, "logprob_B": ba.logprob_b, "p_A": ba.p_a, "p_B": ba.p_b}}
    p1 = (ab.p_a + ba.p_b) / 2
    row["p_answer_1"] = p1
    if abs(p1 - 0.5) <= tie_margin:
        row["status"], row["label"] = "tie", None
    else:
        row["label"] = "answer_1" if p1 > 0.5 else "answer_2"


def pair_record(row: dict[str, Any]) -> dict[str, Any]:
    """The preference pair of a labelled row (the DPO/reward data contract)."""
    first = row["label"] == "answer_1"
    chosen, rejected = row["answers"] if first else row["answers"][::-1]
    ab, ba = row["orders"]["ab"], row["orders"]["ba"]
    # p(chosen) when the chosen answer was shown as (A), and when it was shown as (B)
    as_a, as_b = (ab["p_A"], ba["p_B"]) if first else (ba["p_A"], ab["p_B"])
    return {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "principle": row["principle"],
            "p_chosen": row["p_answer_1"] if first else 1.0 - row["p_answer_1"],
            "probabilities": {"chosen_as_A": as_a, "chosen_as_B": as_b}}


def _write_chunk(ctx: StageContext, index: int, rows: list[dict[str, Any]], judged: list[dict[str, Any]],
                 tokens: int, generation_s: float, seconds: float) -> dict[str, Any]:
    pairs = [pair_record(r) for r in rows if r["status"] == "ok"]
    write_jsonl(chunk_file(ctx, index, LABELS), rows)
    write_jsonl(chunk_file(ctx, index, PAIRS), pairs)
    bad = chunk_file(ctx, index, "quarantine.jsonl")
    with Quarantine(bad) as quarantine:
        for r in rows:
            if r["status"] != "ok":
                quarantine.add(r["status"], f"prompt {r['index']}", r["prompt"], fields={"record": r})
        reasons = dict(quarantine.counts)
    if not reasons:
        bad.unlink(missing_ok=True)
    p_first = [q["p_A"] for r in judged for q in r["orders"].values()]
    agree = [(r["orders"]["ab"]["p_A"] > 0.5) == (r["orders"]["ba"]["p_B"] > 0.5) for r in judged]
    return {"docs_in": len(rows), "docs_out": len(pairs), "quarantined": sum(reasons.values()),
            "quarantined_by_reason": reasons, "generated_tokens": tokens, "generation_seconds": round(generation_s, 3),
            "judging_seconds": round(seconds - generation_s, 3), "questions": 2 * len(judged),
            "sum_p_first_position": sum(p_first), "orders_agree": sum(agree)}


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    """Merge the chunks in prompt order: pairs.jsonl, labels.jsonl, quarantine/pairs.jsonl."""
    names = units(ctx)
    pairs = merge_chunk_files(ctx, names, PAIRS, ctx.stage_dir / PAIRS)
    merge_chunk_files(ctx, names, LABELS, ctx.stage_dir / LABELS)
    target = ctx.stage_dir / QUARANTINE_DIR / PAIR_QUARANTINE
    if not merge_chunk_files(ctx, names, "quarantine.jsonl", target):
        target.unlink(missing_ok=True)
    stats = dict(stats)
    questions = stats.get("questions", 0)
    judged = questions // 2
    stats["quarantined_by_reason"] = dict(sorted(stats.get("quarantined_by_reason", {}).items()))
    stats["mean_p_first_position"] = stats.pop("sum_p_first_position", 0.0) / questions if questions else None
    stats["orders_agree_fraction"] = stats.pop("orders_agree", 0) / judged if judged else None
    stats["unit_seconds"] = stats.pop("seconds", None)
    generation_s = stats.get("generation_seconds") or 0
    stats.update({"pairs": pairs, "prompt_selection": selection_record(ctx),
                  "tokens_per_s": round(stats.get("generated_tokens", 0) / generation_s, 2) if generation_s else None,
                  "outputs": {"pairs": PAIRS, "labels": LABELS}})
    ctx.tracker.log({"ai_feedback/pairs": pairs, "ai_feedback/quarantined": stats.get("quarantined", 0),
                     "ai_feedback/mean_p_first_position": stats["mean_p_first_position"] or 0.0,
                     "ai_feedback/orders_agree_fraction": stats["orders_agree_fraction"] or 0.0}, step=1)
    log.info("ai_feedback: %d prompts, %d pairs, quarantined %s, p(first position) %.3f", stats.get("docs_in", 0),
             pairs, stats["quarantined_by_reason"], stats["mean_p_first_position"] or float("nan"))
    return stats
