"""The ``constitutional`` stage: answer → critique → revision, ``rounds`` times, for each red-team prompt.

An array stage over chunks of the prompt list (``chunk_size`` prompts a unit): a unit generates the initial answers
of its prompts as one batch, then each round the critiques as one batch and the revisions as one batch. Each prompt
gets a principle per round, sampled with a seed of its own (its position in the list and the round), and each
batch samples with a seed of its own (unit, round, step), so the output depends on the config and the seed only —
not on the task that runs a unit, nor on a preemption: a unit stops between rounds when the job is preempted and is
redone whole on the requeue, its files written before its completion marker.

Outputs (``<run>/constitutional/``):
- ``revisions.jsonl``: a line per prompt: the prompt, its initial answer and every round (principle, critique
  request, critique, revision request, revision), its final revision and its status;
- ``sft.jsonl``: ``{"messages": [{"role": "user", ...}, {"role": "assistant", "content": final revision}]}``, a line
  per prompt whose final revision is usable — the sft stage's chat format;
- ``quarantine/generations.jsonl``: the prompts whose generations are not usable, by reason (empty revision, a
  revision that repeats the prompt or a request, a conversation longer than the model's context);
- ``prompts.jsonl`` (the prompts worked on) and ``quarantine/prompts.jsonl`` (bad lines of the prompt files).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from lmhpc.config import ConfigError
from lmhpc.constitutional.common import (
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
from lmhpc.constitutional.config import CONSTITUTIONAL_MODELS, ConstitutionalConfig
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
from lmhpc.launch.preempt import Preempted

log = logging.getLogger("lmhpc.constitutional")

REVISIONS = "revisions.jsonl"
SFT = "sft.jsonl"
GENERATION_QUARANTINE = "generations.jsonl"


def principles(ctx: StageContext, cfg: ConstitutionalConfig) -> tuple[Principle, ...]:
    constitution = load_constitution(constitution_path(cfg.constitution, ctx.cfg.path), "constitutional.constitution")
    return constitution.select(cfg.principles, "constitutional.principles")


def prompts(ctx: StageContext) -> list[str]:
    cfg: ConstitutionalConfig = ctx.cfg.constitutional
    paths = prompt_paths(cfg.prompts, ctx.cfg.path)

    def build(quarantine: Quarantine) -> tuple[list[str], dict[str, Any]]:
        found = read_prompts(paths, cfg.prompt_key, "constitutional.prompts", quarantine)
        return (select_prompts(found, ctx.cfg.run.seed, cfg.max_prompts, ctx.stage),
                {"files": shown_paths(ctx, paths), "usable_prompts": len(found)})

    return frozen_prompts(ctx, build)


def preflight(cfg: Any) -> list[str]:
    """Problems with the constitution, the principles or the prompt files, each naming its key."""
    problems = []
    section: ConstitutionalConfig = cfg.constitutional
    try:
        constitution = load_constitution(constitution_path(section.constitution, cfg.path),
                                         "constitutional.constitution")
        constitution.select(section.principles, "constitutional.principles")
        read_prompts(prompt_paths(section.prompts, cfg.path), section.prompt_key, "constitutional.prompts", None)
    except ConfigError as e:
        problems.append(f"{e.key}: {str(e).split(': ', 1)[1]}")
    return problems


# ------------------------------------------------------------------------------------------ the array stage


def units(ctx: StageContext) -> list[str]:
    """Chunks of the prompt list. The constitution and the prompts are checked here, before any unit runs."""
    cfg: ConstitutionalConfig = ctx.cfg.constitutional
    principles(ctx, cfg)
    return chunk_units(len(prompts(ctx)), cfg.chunk_size)


@dataclass
class _Row:
    """One prompt's conversation while its chunk is worked on."""

    index: int
    prompt: str
    answer: str = ""
    initial: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    detail: str = ""
    answered: bool = False

    def record(self) -> dict[str, Any]:
        return {"index": self.index, "prompt": self.prompt, "initial_answer": self.initial, "rounds": self.rounds,
                "final_revision": self.answer if self.status == "ok" else None, "status": self.status}


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    """Answer, critique and revise the unit's prompts; write its chunk files. Returns its counts."""
    from lmhpc.exchange.source import model_source
    from lmhpc.infer.generate import Generator

    cfg: ConstitutionalConfig = ctx.cfg.constitutional
    chosen = principles(ctx, cfg)
    everything = prompts(ctx)
    rows = [_Row(i, everything[i]) for i in chunk_range(unit)]
    loaded = load_stage_model(ctx, model_source(ctx, cfg.init_from, CONSTITUTIONAL_MODELS), cfg.device, cfg.dtype,
                              cfg.threads)
    gen = Generator(loaded.model, loaded.tokenizer)
    seed = ctx.cfg.run.seed
    started = time.perf_counter()
    tokens = 0

    def generate(conversations: list[list[dict[str, str]]], step: str) -> list[Any]:
        if not conversations:
            return []
        nonlocal tokens
        s = cfg.sampling
        out = gen.generate(conversations, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                           top_p=s.top_p, repetition_penalty=s.repetition_penalty, chat=True, add_bos=cfg.add_bos,
                           seed=derive_seed(seed, ctx.stage, unit, step))
        tokens += sum(len(c.token_ids) for c in out)
        return out

    live = _fitting(gen, rows, [[_user(r.prompt)] for r in rows], cfg, 1)
    for row, done in zip(live, generate([[_user(r.prompt)] for r in live], "answer")):
        row.answer = row.initial = done.text.strip()
        row.answered = True
    for number in range(1, cfg.rounds + 1):
        if ctx.should_stop():
            raise Preempted(f"unit {index} ({unit}) stops before round {number}; it is redone whole on the requeue")
        live = [r for r in live if r.status == "ok"]
        for row in live:
            p = sampled_principle(chosen, seed, ctx.stage, "principle", row.index, number)
            row.rounds.append({"round": number, "principle": p.id, "critique_request": p.critique_request,
                               "critique": None, "revision_request": p.revision_request, "revision": None})
        # the whole round must fit: the critique, then the revision request and the revision after it
        live = _fitting(gen, live, [[*_critique_chat(r), _assistant(""), _user(r.rounds[-1]["revision_request"])]
                                    for r in live], cfg, 2)
        for row, done in zip(live, generate([_critique_chat(r) for r in live], f"critique-{number}")):
            row.rounds[-1].update({"critique": done.text.strip(), "critique_finish": done.finish_reason})
        live = _fitting(gen, live, [_revision_chat(r) for r in live], cfg, 1)
        for row, done in zip(live, generate([_revision_chat(r) for r in live], f"revision-{number}")):
            text = done.text.strip()
            row.rounds[-1].update({"revision": text, "revision_finish": done.finish_reason})
            reason = _degenerate(text, row)
            if reason:
                row.status, row.detail = reason, f"round {number}"
            else:
                row.answer = text
    seconds = time.perf_counter() - started
    return _write_chunk(ctx, index, rows, tokens, seconds)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def _critique_chat(row: _Row) -> list[dict[str, str]]:
    return [_user(row.prompt), _assistant(row.answer), _user(row.rounds[-1]["critique_request"])]


def _revision_chat(row: _Row) -> list[dict[str, str]]:
    last = row.rounds[-1]
    return [*_critique_chat(row), _assistant(last["critique"]), _user(last["revision_request"])]


def _fitting(gen: Any, rows: list[_Row], chats: list[list[dict[str, str]]], cfg: ConstitutionalConfig,
             replies: int) -> list[_Row]:
    """The rows whose conversation and ``replies`` replies of ``max_new_tokens`` fit the model's context; the
    others are marked ``too_long`` (and leave the chunk's work)."""
    limit = gen.model.args.max_seq_len
    out = []
    for row, chat in zip(rows, chats):
        length = len(gen.encode(chat, chat=True, add_bos=cfg.add_bos)) + replies * cfg.sampling.max_new_tokens
        if length > limit:
            row.status = "too_long"
            row.detail = f"round {len(row.rounds)}: {length} tokens with the replies to come > max_seq_len {limit}"
            continue
        out.append(row)
    return out


def _degenerate(revision: str, row: _Row) -> str | None:
    """Why a revision cannot be SFT data, or None."""
    if not revision:
        return "empty_revision"
    text = normalized(revision)
    if text == normalized(row.prompt):
        return "revision_repeats_prompt"
    last = row.rounds[-1]
    if text in (normalized(last["critique_request"]), normalized(last.get("revision_request", ""))):
        return "revision_repeats_request"
    return None


def _write_chunk(ctx: StageContext, index: int, rows: list[_Row], tokens: int, seconds: float) -> dict[str, Any]:
    ok = [r for r in rows if r.status == "ok"]
    write_jsonl(chunk_file(ctx, index, REVISIONS), (r.record() for r in rows))
    write_jsonl(chunk_file(ctx, index, SFT),
                ({"messages": [_user(r.prompt), _assistant(r.answer)]} for r in ok))
    bad = chunk_file(ctx, index, GENERATION_QUARANTINE)
    with Quarantine(bad) as quarantine:
        for r in rows:
            if r.status != "ok":
                quarantine.add(r.status, f"prompt {r.index}", r.prompt, r.detail, fields={"record": r.record()})
        reasons = dict(quarantine.counts)
    if not reasons:
        bad.unlink(missing_ok=True)  # a chunk redone after a preemption leaves no stale file
    return {"docs_in": len(rows), "docs_out": len(ok), "quarantined": sum(reasons.values()),
            "quarantined_by_reason": reasons, "generated_tokens": tokens, "generation_seconds": round(seconds, 3),
            "empty_initial_answers": sum(1 for r in rows if r.answered and not r.initial)}


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    """Merge the chunks in prompt order: revisions.jsonl, sft.jsonl, quarantine/generations.jsonl."""
    cfg: ConstitutionalConfig = ctx.cfg.constitutional
    names = units(ctx)
    merge_chunk_files(ctx, names, REVISIONS, ctx.stage_dir / REVISIONS)
    sft = merge_chunk_files(ctx, names, SFT, ctx.stage_dir / SFT)
    quarantined = merge_chunk_files(ctx, names, GENERATION_QUARANTINE,
                                    ctx.stage_dir / QUARANTINE_DIR / GENERATION_QUARANTINE)
    if not quarantined:
        (ctx.stage_dir / QUARANTINE_DIR / GENERATION_QUARANTINE).unlink(missing_ok=True)
    stats = dict(stats)
    stats["quarantined_by_reason"] = dict(sorted(stats.get("quarantined_by_reason", {}).items()))
    seconds = stats.pop("seconds", None)
    generation_s = stats.get("generation_seconds") or 0
    stats.update({"sft_examples": sft, "rounds": cfg.rounds, "prompt_selection": selection_record(ctx),
                  "tokens_per_s": round(stats.get("generated_tokens", 0) / generation_s, 2) if generation_s else None,
                  "unit_seconds": seconds, "outputs": {"sft": SFT, "revisions": REVISIONS}})
    ctx.tracker.log({"constitutional/sft_examples": sft, "constitutional/quarantined": stats.get("quarantined", 0),
                     "constitutional/tokens_per_s": stats["tokens_per_s"] or 0.0}, step=1)
    log.info("constitutional: %d prompts, %d SFT examples, quarantined %s", stats.get("docs_in", 0), sft,
             stats["quarantined_by_reason"])
    return stats

