"""The evaluate stage: perplexity and multiple-choice scores of one or more models, in one table.

For each model (by default the newest checkpoint of every model stage the run chains — pretrain, sft,
dpo, ... — or each complete checkpoint; or the models named in ``evaluate.models``): perplexity per token
and bits per byte on each held-out set, per source;
the benchmark tasks scored as lm-evaluation-harness scores them; optionally harness tasks run by the harness
itself through :class:`~lmhpc.evaluate.harness.LMHarnessModel`. Writes ``results.json`` and ``results.md`` and
logs the table to W&B. Items that cannot be scored are counted in the stats by reason, never scored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmhpc.context import StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.evaluate.benchdata import find_data_dir
from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.evaluate.multiple_choice import score_items
from lmhpc.evaluate.perplexity import Document, score_documents
from lmhpc.evaluate.results import log_table, markdown_table
from lmhpc.evaluate.scoring import Scorer
from lmhpc.evaluate.tasks import LAMBADA_LICENSE, TASKS, BadTaskItem, MCItem, file_item, read_task_file
from lmhpc.evaluate.texts import lambada_documents, prefix_documents, text_set_documents
from lmhpc.exchange.tokenizer import TextTokenizer
from lmhpc.fsutil import write_json, write_text

log = logging.getLogger("lmhpc.evaluate")

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


@dataclass
class ModelRef:
    """A model to evaluate: its name in the table, where it is, where its tokenizer is (None: its own)."""

    name: str
    path: Path
    tokenizer: Path | None = None


def models_to_evaluate(ctx: StageContext, cfg: EvaluateConfig) -> list[ModelRef]:
    """``evaluate.models``, else every model stage the run chains (pretrain, then the alignment stages), in chain
    order: each one's newest complete checkpoint, or all of them with ``all_checkpoints``."""
    if cfg.models:
        return [ModelRef(Path(m).name or m, ctx.cfg.path(m)) for m in cfg.models]
    from lmhpc.train.checkpoint import complete_steps

    tokenizer = ctx.stage_output("tokenizer")
    refs: list[ModelRef] = []
    for stage in [s for s in ctx.inputs if s != "tokenizer"]:
        folder = ctx.stage_output(stage)
        steps = complete_steps(folder / "checkpoints")
        if not steps:
            raise FileNotFoundError(f"the {stage} stage {folder} has no complete checkpoint to evaluate")
        chosen = steps if cfg.all_checkpoints else steps[-1:]
        refs += [ModelRef(f"{stage}/step-{s}", folder / "checkpoints" / f"step-{s}", tokenizer) for s in chosen]
    if not refs:
        raise ValueError("evaluate: no model to evaluate: set evaluate.models, or chain a model stage "
                         "(pretrain, sft, dpo, ...) before evaluate in run.stages")
    return refs


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("evaluate.device=cuda but CUDA is not available on this machine")
        return torch.device("cuda")
    return torch.device("cpu")


def task_items(cfg: EvaluateConfig, data_dir: Path | None, resolve: Callable[[str], Path]
               ) -> dict[str, list[MCItem | BadTaskItem]]:
    """Every task's items (the first ``limit`` documents), built once for all models."""
    out: dict[str, list[MCItem | BadTaskItem]] = {}
    for name in cfg.tasks:
        task = TASKS[name]
        out[name] = [_item(task.to_item, d) for d in task.items(data_dir, cfg.limit)]
    for tf in cfg.task_files:
        lines = read_task_file(resolve(tf.path))
        lines = lines[:cfg.limit] if cfg.limit else lines
        out[tf.name] = [d if isinstance(d, BadTaskItem) else _item(file_item, d, tf.target_delimiter) for d in lines]
    return out


def _item(build: Any, doc: dict[str, Any], *args: Any) -> MCItem | BadTaskItem:
    try:
        return build(doc, *args)
    except BadTaskItem as e:
        return e
    except (KeyError, ValueError, TypeError, IndexError) as e:
        return BadTaskItem(f"bad item: {type(e).__name__}: {e}")


def perplexity_documents(cfg: EvaluateConfig, tokenizer: TextTokenizer, data_dir: Path | None,
                         quarantine: Quarantine, resolve: Callable[[str], Path]) -> dict[str, list[Document]]:
    """The perplexity sets for one tokenizer: each text set, each prefix, LAMBADA."""
    p = cfg.perplexity
    sets: dict[str, list[Document]] = {}
    for text_set in p.texts:
        docs = text_set_documents(text_set, resolve, tokenizer, quarantine, p)
        sets[text_set.source or Path(text_set.path).parent.name or "texts"] = docs
    for prefix in p.prefixes:
        path = resolve(prefix)
        sets[path.name] = prefix_documents(path, tokenizer, p)
    if p.lambada:
        sets["lambada"] = lambada_documents(data_dir, tokenizer, p.lambada, p)
    return sets


def evaluate_model(cfg: EvaluateConfig, ref: ModelRef, items: dict[str, list], data_dir: Path | None,
                   quarantine: Quarantine, device: torch.device, resolve: Callable[[str], Path],
                   work_dir: Path) -> dict[str, Any]:
    """One row of the table: the model's perplexity per set and source, its task scores, harness scores.
    ``resolve`` turns config paths into files; the harness keeps its dataset cache in ``work_dir``."""
    from lmhpc.exchange import load_model
    from lmhpc.infer.routing import no_token_dropping

    dtype = getattr(torch, cfg.dtype)
    started = time.perf_counter()
    loaded = load_model(ref.path, device=device, dtype=dtype, tokenizer=ref.tokenizer)
    load_s = time.perf_counter() - started
    # scores must not depend on which items share a batch: MoE layers keep every token (no capacity limit)
    with no_token_dropping(loaded.model):
        row = _score_model(cfg, ref, loaded, items, data_dir, quarantine, device, resolve, work_dir)
    row["load_seconds"] = round(load_s, 3)
    return row


def _score_model(cfg: EvaluateConfig, ref: ModelRef, loaded: Any, items: dict[str, list], data_dir: Path | None,
                 quarantine: Quarantine, device: torch.device, resolve: Callable[[str], Path],
                 work_dir: Path) -> dict[str, Any]:
    model, tokenizer = loaded.model, loaded.tokenizer
    prefix_token = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if prefix_token is None:
        raise ValueError(f"{ref.path}: the tokenizer has neither a BOS nor an EOS token to start a window with")
    max_len = loaded.args.max_seq_len
    scorer = Scorer(model, device, max_len, cfg.batch_tokens)
    row: dict[str, Any] = {"name": ref.name, "source": str(ref.path), "params": sum(p.numel() for p in
                           {id(p): p for p in model.parameters()}.values()), "max_seq_len": max_len,
                           "vocab_size": tokenizer.vocab_size, "perplexity": {}, "tasks": {}}
    window = min(cfg.perplexity.window or max_len, max_len)
    for set_name, docs in perplexity_documents(cfg, tokenizer, data_dir, quarantine, resolve).items():
        t0 = time.perf_counter()
        tallies, skipped = score_documents(scorer, docs, prefix_token, window)
        total = tallies.get("all")
        row["perplexity"][set_name] = {
            **(total.summary() if total else {"docs": 0, "tokens": 0}),
            "per_source": {s: t.summary() for s, t in sorted(tallies.items()) if s != "all"},
            "skipped": skipped, "window": window, "seconds": round(time.perf_counter() - t0, 3),
            "license": LAMBADA_LICENSE if set_name == "lambada" else None,
        }
        log.info("%s: %s perplexity %.3f, %.4f bits per byte over %d tokens", ref.name, set_name,
                 row["perplexity"][set_name].get("perplexity", float("nan")),
                 row["perplexity"][set_name].get("bits_per_byte") or float("nan"), total.tokens if total else 0)
    licenses = {tf.name: tf.license for tf in cfg.task_files}
    for name, task_list in items.items():
        result = score_items(scorer, tokenizer, prefix_token, task_list, name, cfg.too_long)
        task = TASKS.get(name)
        metrics = list(task.metrics) if task else ["acc", "acc_norm"]
        row["tasks"][name] = {**result.summary(metrics), "metrics": metrics,
                              "split": task.split if task else "file",
                              "license": task.license if task else licenses.get(name)}
        log.info("%s: %s %s over %d items (%d skipped)", ref.name, name,
                 ", ".join(f"{m} {row['tasks'][name][m]:.4f}" for m in metrics if row["tasks"][name][m] is not None),
                 len(result.acc), sum(result.skipped.values()))
    if cfg.harness.tasks:
        from lmhpc.evaluate.harness import LMHarnessModel, run_harness

        adapter = LMHarnessModel(model, tokenizer, device, max_len, cfg.batch_tokens)
        row["harness"] = run_harness(adapter, cfg.harness, resolve, work_dir / "harness_cache")
    row["scorer"] = vars(scorer.counters)
    return row


def results_document(cfg: EvaluateConfig, rows: list[dict[str, Any]], data_dir: Path | None) -> dict[str, Any]:
    """``results.json``: the rows, the markdown table and the license of every data set used."""
    licenses = {name: TASKS[name].license for name in cfg.tasks}
    licenses.update({tf.name: tf.license for tf in cfg.task_files})
    if cfg.perplexity.lambada:
        licenses["lambada"] = LAMBADA_LICENSE
    return {"models": rows, "licenses": licenses, "data": str(data_dir) if data_dir else None,
            "table": markdown_table(rows)}


def run(ctx: StageContext) -> dict[str, Any]:
    """Evaluate every model; returns the stage's stats."""
    cfg: EvaluateConfig = ctx.cfg.evaluate
    started = time.time()
    torch.set_num_threads(cfg.threads or max(ctx.cfg.resources_for("evaluate").cpus_per_task, 1))
    device = pick_device(cfg.device)
    needs_data = bool(cfg.tasks) or cfg.perplexity.lambada > 0
    data_dir = find_data_dir(cfg.data_dir and ctx.cfg.path(cfg.data_dir)) if needs_data else None
    refs = models_to_evaluate(ctx, cfg)
    items = task_items(cfg, data_dir, ctx.cfg.path)
    rows = []
    with Quarantine(ctx.stage_dir / "quarantine" / "texts.jsonl.zst") as quarantine:
        for ref in refs:
            log.info("evaluating %s (%s) on %s", ref.name, ref.path, device)
            rows.append(evaluate_model(cfg, ref, items, data_dir, quarantine, device, ctx.cfg.path, ctx.stage_dir))
        quarantined = dict(quarantine.counts)
    results = results_document(cfg, rows, data_dir)
    table = results["table"]
    write_json(ctx.stage_dir / RESULTS_JSON, results)
    write_text(ctx.stage_dir / RESULTS_MD, table)
    log.info("results:\n%s", table)
    log_table(ctx.tracker, rows, step=1)
    skipped: dict[str, int] = {}
    scored = 0
    for row in rows:
        for task in row["tasks"].values():
            scored += task["items"]
            for reason, n in task["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
    seconds = time.time() - started
    return {"step": len(rows) + 1, "models": [r["name"] for r in rows], "items_scored": scored,
            "items_skipped": skipped, "quarantined_text_records": quarantined,
            "items_per_s": scored / seconds if seconds else None, "results": str(ctx.stage_dir / RESULTS_JSON),
            "device": str(device)}
