"""The ablate stage: one array unit per data variant, then the comparison with the baseline.

A unit makes its variant's data and scores a probe trained on it, in ``variants/<variant>/``:

1. ``curate/``: the run's inputs through the curate stage's unit code, under the variant's settings;
2. ``dedup/``: the dedup stage's code on one rank (skipped by the ``without_dedup`` variant);
3. ``tokenize/``: the tokenize stage's code with the run's tokenizer, one prefix per source and ``blend.json``;
4. ``probe/``: the pretrain stage's training loop in a one-process gloo group, the same probe, seed and steps for
   every variant, so that the differences are the data's;
5. ``evaluate/``: the evaluate library on the probe's last checkpoint: perplexity on the held-out texts and the
   multiple-choice tasks, with standard errors (``result.json``), and the per-item figures (``items.json``).

Each step ends with its own marker, so a preempted unit resumes at the step it stopped in (training from its last
checkpoint). ``finalize`` compares every variant with the baseline (:mod:`lmhpc.ablate.compare`) and writes
``comparison.json`` and ``comparison.md``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from lmhpc.ablate.compare import compare, markdown
from lmhpc.ablate.config import AblateConfig
from lmhpc.ablate.variants import VARIANTS_DIR, Variant, build_variants, variant_config
from lmhpc.config import RunConfig
from lmhpc.context import DONE_MARKER, StageContext
from lmhpc.fsutil import read_json, write_json, write_text
from lmhpc.runner import StageFailed, complete_stage, finalize_units, run_units

RESULT_FILE = "result.json"
ITEMS_FILE = "items.json"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
TOKENIZER_MODEL = "tokenizer.model"


def variants(ctx: StageContext) -> list[Variant]:
    return build_variants(ctx.cfg.ablate, ctx.cfg)


def settings_digest(ctx: StageContext, variant: Variant) -> str:
    """A digest of what decides a variant's data: its curate, dedup and tokenize settings and the seed (the
    stage's own fingerprint covers only the ``ablate:`` section)."""
    from lmhpc.integrity import fingerprint_of, section_view

    vcfg = variant_config(ctx.cfg, variant, ctx.stage_dir)
    record = {s: section_view(vcfg, s) for s in ("curate", "dedup", "tokenize")}
    record["variant"] = {"name": variant.name, "dedup": variant.dedup, "without_filter": variant.without_filter,
                         "source": variant.source, "mix": variant.mix}
    return fingerprint_of(record)


def units(ctx: StageContext) -> list[str]:
    """One unit per variant, the baseline first: ``<variant>@<settings digest>``, so that a change of the curate,
    dedup or tokenize settings after the stage started stops it (the units differ from the frozen list) rather
    than mixing variants made under two settings."""
    return [f"{v.name}@{settings_digest(ctx, v)}" for v in variants(ctx)]


def unit_file(ctx: StageContext, unit: str) -> Path:
    """The tokenizer model every variant is encoded with: frozen with the units, so a retrained tokenizer stops
    a started stage too."""
    cfg: AblateConfig = ctx.cfg.ablate
    return ctx.cfg.path(cfg.tokenizer) if cfg.tokenizer else ctx.inputs["tokenizer"] / TOKENIZER_MODEL


def variant_dir(ctx: StageContext, name: str) -> Path:
    return ctx.stage_dir / VARIANTS_DIR / name


def tokenizer_dir(ctx: StageContext) -> Path:
    """A folder holding the tokenizer every variant is encoded with (``tokenizer.model``)."""
    cfg: AblateConfig = ctx.cfg.ablate
    if not cfg.tokenizer:
        folder = ctx.inputs["tokenizer"]
        if not (folder / TOKENIZER_MODEL).is_file():
            raise StageFailed(f"ablate: the tokenizer stage is complete but {folder / TOKENIZER_MODEL} is missing")
        return folder
    folder = ctx.stage_dir / "tokenizer"
    target = folder / TOKENIZER_MODEL
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{TOKENIZER_MODEL}.{time.time_ns()}.tmp"
        shutil.copyfile(ctx.cfg.path(cfg.tokenizer), tmp)
        tmp.replace(target)
    return folder


def _sub(ctx: StageContext, cfg: RunConfig, stage: str, inputs: dict[str, Path]) -> StageContext:
    """A context for one step of a variant: its config, this unit's preemption flag, logger and tracker."""
    return StageContext(cfg=cfg, stage=stage, flag=ctx.flag, input_dirs=inputs, log=ctx.log)


def _array_step(sub: StageContext, module_name: str) -> dict[str, Any]:
    """Run an array stage's units and finalize in this process (skipped when its marker is there)."""
    import importlib

    done = sub.stage_dir / DONE_MARKER
    if done.exists():
        return read_json(sub.stage_dir / "stats.json")
    sub.stage_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(module_name)
    started = time.time()
    run_units(sub, module, 0, 1)
    return finalize_units(sub, module, started)


def _dedup_step(sub: StageContext) -> dict[str, Any]:
    from lmhpc.dedup import stage as dedup_stage

    if (sub.stage_dir / DONE_MARKER).exists():
        return read_json(sub.stage_dir / "stats.json")
    sub.stage_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    return complete_stage(sub, dedup_stage.run(sub), started)


def _probe_step(ctx: StageContext, vcfg: RunConfig, folder: Path, tokenizer: Path) -> dict[str, Any]:
    """Train the probe on the variant's blend; returns the training stats."""
    import torch
    import torch.distributed as dist

    from lmhpc.train.stage import init_distributed, pick_device, train

    stage_dir = folder / "probe"
    if (stage_dir / DONE_MARKER).exists():
        return read_json(stage_dir / "stats.json")
    cfg: AblateConfig = ctx.cfg.ablate
    vcfg.sections["pretrain"] = cfg.probe.pretrain_config(str(tokenizer / TOKENIZER_MODEL))
    sub = _sub(ctx, vcfg, "probe", {"tokenize": folder / "tokenize", "tokenizer": tokenizer})
    stage_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.probe.train.device, 0)
    if device.type == "cpu":
        torch.set_num_threads(max(1, ctx.cfg.resources_for("ablate").cpus_per_task))
    created = init_distributed(0, 1, device)
    try:
        stats = train(sub, vcfg.pretrain, device)
    finally:
        if created:
            dist.destroy_process_group()
    write_json(stage_dir / "stats.json", stats)
    write_json(stage_dir / DONE_MARKER, {"completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return stats


def _evaluate_step(ctx: StageContext, name: str, folder: Path, tokenizer: Path) -> dict[str, Any]:
    """Score the probe's last checkpoint with the evaluate library: ``result.json`` (the evaluate row) and
    ``items.json`` (per-document and per-item figures, for paired differences); returns the row."""
    from lmhpc.ablate.scoring import score_probe
    from lmhpc.data.quarantine import Quarantine
    from lmhpc.evaluate.benchdata import find_data_dir
    from lmhpc.evaluate.stage import pick_device, task_items
    from lmhpc.train.checkpoint import complete_steps

    out = folder / "evaluate"
    if (out / RESULT_FILE).is_file():
        return read_json(out / RESULT_FILE)
    cfg = ctx.cfg.ablate.eval
    checkpoints = folder / "probe" / "checkpoints"
    steps = complete_steps(checkpoints)
    if not steps:
        raise StageFailed(f"ablate: variant {name}: the probe left no complete checkpoint in {checkpoints}")
    needs_data = bool(cfg.tasks) or cfg.perplexity.lambada > 0
    data_dir = find_data_dir(cfg.data_dir and ctx.cfg.path(cfg.data_dir)) if needs_data else None
    items = task_items(cfg, data_dir, ctx.cfg.path)
    out.mkdir(parents=True, exist_ok=True)
    with Quarantine(out / "quarantine" / "texts.jsonl.zst") as quarantine:
        row, per_item = score_probe(cfg, name, checkpoints / f"step-{steps[-1]}", tokenizer, items, data_dir,
                                    quarantine, pick_device(cfg.device), ctx.cfg.path)
        row["quarantined_text_records"] = dict(quarantine.counts)
    write_json(out / ITEMS_FILE, per_item)
    write_json(out / RESULT_FILE, row)  # last: the step's marker
    return row


def process_unit(ctx: StageContext, index: int, unit: str) -> dict[str, Any]:
    """Make one variant's data, train its probe, score it; returns a summary (the full row is in result.json)."""
    name = unit.split("@", 1)[0]
    variant = next((v for v in variants(ctx) if v.name == name), None)
    if variant is None or unit != f"{name}@{settings_digest(ctx, variant)}":
        raise StageFailed(f"ablate: unit {unit!r} is no variant of this config")
    unit = name
    folder = variant_dir(ctx, unit)
    tokenizer = tokenizer_dir(ctx)
    vcfg = variant_config(ctx.cfg, variant, ctx.stage_dir)
    seconds: dict[str, float] = {}
    t0 = time.time()
    summary_file = folder / "data.json"
    if not summary_file.is_file():
        curate = _array_step(_sub(ctx, vcfg, "curate", {}), "lmhpc.curate.stage")
        seconds["curate"] = time.time() - t0
        docs_dir = folder / "curate"
        dedup: dict[str, Any] = {}
        if variant.dedup:
            dedup = _dedup_step(_sub(ctx, vcfg, "dedup", {"curate": folder / "curate"}))
            docs_dir = folder / "dedup"
        seconds["dedup"] = time.time() - t0 - sum(seconds.values())
        tokenize = _array_step(_sub(ctx, vcfg, "tokenize", {"dedup": docs_dir, "tokenizer": tokenizer}),
                               "lmhpc.tokenizer.tokenize_stage")
        seconds["tokenize"] = time.time() - t0 - sum(seconds.values())
        blend = read_json(folder / "tokenize" / "blend.json")
        data = {
            "curate": {"docs_in": curate["docs_in"], "docs_out": curate["docs_out"], "dropped": curate["dropped"]},
            "dedup": ({"docs_in": dedup["docs_in"], "docs_out": dedup["docs_out"], "dropped": dedup["dropped"]}
                      if dedup else None),
            "docs": tokenize["docs_out"], "tokens": tokenize["tokens"],
            "sources": {s: {"tokens": row["tokens"], "docs": row["docs"], "weight": row["weight"]}
                        for s, row in blend["sources"].items()},
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        write_json(summary_file, data)
    data = read_json(summary_file)
    t1 = time.time()
    probe = _probe_step(ctx, vcfg, folder, tokenizer)
    t2 = time.time()
    _evaluate_step(ctx, unit, folder, tokenizer)
    t3 = time.time()
    if not ctx.cfg.ablate.keep_data:
        for step in ("curate", "dedup", "tokenize"):
            shutil.rmtree(folder / step / "data", ignore_errors=True)
        for leftover in (folder / "tokenize").glob("*.bin"):
            leftover.unlink()
        shutil.rmtree(folder / "probe" / "data_cache", ignore_errors=True)
    budget = ctx.cfg.ablate.probe.token_budget()
    summary = {
        "description": variant.description, "kind": variant.kind, "docs": data["docs"], "tokens": data["tokens"],
        "tokens_trained": probe.get("tokens_trained"), "epochs": round(budget / data["tokens"], 3)
        if data["tokens"] else None, "final_loss": probe.get("final_loss"),
        "seconds": {**data["seconds"], "probe": round(t2 - t1, 3), "evaluate": round(t3 - t2, 3)},
    }
    write_json(folder / "summary.json", summary)
    ctx.log.info("ablate: variant %s done: %d docs, %d tokens, final loss %s", unit, data["docs"], data["tokens"],
                 summary["final_loss"])
    return {"variants": {unit: summary}, "unit_seconds": round(time.time() - t0, 3)}


def finalize(ctx: StageContext, stats: dict[str, Any]) -> dict[str, Any]:
    """Compare every variant with the baseline: ``comparison.json`` and ``comparison.md``."""
    rows, data, items = [], {}, {}
    for variant in variants(ctx):
        folder = variant_dir(ctx, variant.name)
        row = read_json(folder / "evaluate" / RESULT_FILE, default=None)
        if row is None:
            raise StageFailed(f"ablate: variant {variant.name} has no {folder / 'evaluate' / RESULT_FILE}")
        rows.append(row)
        items[variant.name] = read_json(folder / "evaluate" / ITEMS_FILE)
        data[variant.name] = {**read_json(folder / "data.json"), **read_json(folder / "summary.json")}
    cfg: AblateConfig = ctx.cfg.ablate
    comparison = compare(variants(ctx), rows, data, {
        "token_budget": cfg.probe.token_budget(), "steps": cfg.probe.train.steps,
        "seed": cfg.probe.train.seed if cfg.probe.train.seed >= 0 else ctx.cfg.run.seed,
    }, items)
    table = markdown(comparison)
    write_json(ctx.stage_dir / COMPARISON_JSON, comparison)
    ctx.tracker.log({"ablation": {v["name"]: {m.replace(" ", "/"): s["value"] for m, s in v["scores"].items()
                                              if s["value"] is not None} for v in comparison["variants"]}}, step=1)
    write_text(ctx.stage_dir / COMPARISON_MD, table)
    print(table, flush=True)
    stats = dict(stats)
    stats["step"] = 2  # after the comparison's W&B step
    stats["exceeding_stderr"] = [f"{d['variant']}: {d['metric']}" for d in comparison["exceeding"]]
    stats["exceeding_paired_stderr"] = [f"{d['variant']}: {d['metric']}" for d in comparison["exceeding_paired"]]
    stats["comparison"] = str(ctx.stage_dir / COMPARISON_JSON)
    return stats
