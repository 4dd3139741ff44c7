"""The quantize stage: each configured method applied to one model, each result scored against the original.

The model is ``quantize.init_from`` or the latest model stage the run chains (:mod:`lmhpc.exchange.source`).
Every method is checked against it before any work (architecture, group sizes, calibration data). Each method
writes a packed folder ``<stage>/<name>/`` (:mod:`lmhpc.quantize.packed`: ``model.safetensors`` and the
tokenizer) and each ``quantize.gguf`` type a folder ``<stage>/gguf-<type>/model.gguf``; a folder is complete when
its ``DONE`` marker (its row of the table) exists, so a rerun after a preemption skips finished methods. Rows
are scored with the evaluate stage's library (perplexity per held-out set, multiple-choice tasks), the
quantized models loaded as they run (quantized layers, not float copies). Writes ``results.json`` and
``results.md`` and logs the table to W&B.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmhpc.context import DONE_MARKER, StageContext
from lmhpc.data.quarantine import Quarantine
from lmhpc.evaluate.config import EvaluateConfig
from lmhpc.evaluate.results import cell, columns, log_table
from lmhpc.evaluate.stage import ModelRef, evaluate_model, pick_device, task_items
from lmhpc.exchange.load import build_model, read_weights
from lmhpc.exchange.source import model_source
from lmhpc.exchange.weights import ModelWeights, read_tokenizer_files
from lmhpc.fsutil import write_json, write_text
from lmhpc.launch.preempt import Preempted
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.calibration import CalibrationError, sample_windows, stage_prefixes
from lmhpc.quantize.config import MethodSpec, QuantizeConfig
from lmhpc.quantize.int8 import torchao_int8
from lmhpc.quantize.model import check_model, gptq_model, nf4_model, rtn_model
from lmhpc.quantize.packed import MODEL_FILE, bits_per_weight, save_folder

log = logging.getLogger("lmhpc.quantize")

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FLOAT_ROW = "float"


def source_weights(ctx: StageContext, cfg: QuantizeConfig) -> tuple[Path, ModelWeights, Path | None]:
    """(where the model is, its weights, the tokenizer folder to score it with: the run's, or None: its own)."""
    path = model_source(ctx, cfg.init_from, cfg.model_stages())
    weights = read_weights(path)
    tokenizer = ctx.stage_output("tokenizer") if "tokenizer" in ctx.inputs else None
    if tokenizer is not None and not weights.tokenizer_files:
        weights.tokenizer_files = read_tokenizer_files(tokenizer)
    return path, weights, tokenizer


def check_methods(cfg: QuantizeConfig, model: Transformer, where: str) -> None:
    """Every method against the model, before any work; errors name the config key."""
    from lmhpc.config import ConfigError

    for i, method in enumerate(cfg.methods):
        key = f"quantize.methods[{i}]"
        method.check_model(key, model.args, where)
        bits = method.nbits()
        try:
            check_model(model, bits, None if method.method == "nf4" else method.group())
        except ValueError as err:
            raise ConfigError(key, f"{where}: {err}") from None


def calibration_windows(ctx: StageContext, cfg: QuantizeConfig, model: Transformer) -> torch.Tensor | None:
    """GPTQ's calibration windows (None when no method needs them)."""
    if not cfg.needs_calibration():
        return None
    c = cfg.calibration
    seq_len = c.seq_len or model.args.max_seq_len
    if seq_len > model.args.max_seq_len:
        raise CalibrationError(f"quantize.calibration.seq_len: {seq_len} exceeds the model's max_seq_len "
                               f"({model.args.max_seq_len})")
    if c.prefixes:
        prefixes = [ctx.cfg.path(p) for p in c.prefixes]
    elif "tokenize" in ctx.inputs:
        prefixes = stage_prefixes(ctx.stage_output("tokenize"))
    else:
        prefixes = []
    seed = ctx.cfg.run.seed if c.seed is None else c.seed
    return sample_windows(prefixes, c.sequences, seq_len, seed, model.args.vocab_size)


def quantize_method(model: Transformer, method: MethodSpec, calibration: torch.Tensor | None,
                    batch_size: int = 8) -> dict[str, Any]:
    """Quantize ``model`` in place with one method; its quantized tensors by parameter name."""
    if method.method == "rtn":
        return rtn_model(model, method.nbits(), method.group(), method.sym)
    if method.method == "gptq":
        assert calibration is not None
        return gptq_model(model, calibration, method.nbits(), method.group(), method.sym, method.damp,
                          act_order=method.act_order, static_groups=method.static_groups,
                          true_sequential=method.true_sequential, block_size=method.block_size,
                          batch_size=batch_size)
    if method.method == "nf4":
        return nf4_model(model)
    return torchao_int8(model, method.method)


def gguf_bits_per_weight(path: Path) -> float:
    """Stored bits per weight of a GGUF file's block matrices (block scales included)."""
    from gguf import GGUFReader

    bits = numel = 0
    for tensor in GGUFReader(str(path)).tensors:
        if tensor.name.startswith("blk.") and len(tensor.shape) == 2:
            bits += 8 * int(tensor.n_bytes)
            numel += int(tensor.n_elements)
    return bits / numel if numel else float("nan")


def folder_bytes(folder: Path, files: tuple[str, ...]) -> int:
    return sum((folder / f).stat().st_size for f in files if (folder / f).is_file())


class Scorer:
    """Scores models with the evaluate stage's library, the task items built once."""

    def __init__(self, ctx: StageContext, cfg: QuantizeConfig, quarantine: Quarantine) -> None:
        from lmhpc.evaluate.benchdata import find_data_dir

        e = cfg.eval
        self.cfg = EvaluateConfig(tasks=list(e.tasks), task_files=list(e.task_files), limit=e.limit,
                                  data_dir=e.data_dir, perplexity=e.perplexity, too_long=e.too_long,
                                  batch_tokens=e.batch_tokens, device=e.device)
        needs_data = bool(e.tasks) or e.perplexity.lambada > 0
        self.data_dir = find_data_dir(e.data_dir and ctx.cfg.path(e.data_dir)) if needs_data else None
        self.items = task_items(self.cfg, self.data_dir, ctx.cfg.path)
        self.device = pick_device(e.device)
        self.ctx, self.quarantine = ctx, quarantine

    def enabled(self) -> bool:
        p = self.cfg.perplexity
        return bool(self.items or p.texts or p.prefixes or p.lambada)

    def score(self, name: str, path: Path, tokenizer: Path | None) -> dict[str, Any]:
        if not self.enabled():
            return {"name": name, "source": str(path), "perplexity": {}, "tasks": {}}
        return evaluate_model(self.cfg, ModelRef(name, path, tokenizer), self.items, self.data_dir,
                              self.quarantine, self.device, self.ctx.cfg.path, self.ctx.stage_dir)


def _fresh(folder: Path) -> None:
    """Remove what an interrupted attempt left of a folder without its DONE marker."""
    if folder.exists():
        shutil.rmtree(folder)


def run_method(ctx: StageContext, cfg: QuantizeConfig, method: MethodSpec, model: Transformer,
               weights: ModelWeights, calibration: torch.Tensor | None, scorer: Scorer) -> dict[str, Any]:
    folder = ctx.stage_dir / method.name
    _fresh(folder)
    work = copy.deepcopy(model)
    started = time.perf_counter()
    quantized = quantize_method(work, method, calibration, cfg.calibration.batch_size)
    seconds = time.perf_counter() - started
    tmp = folder.with_name(f".{method.name}.tmp")
    _fresh(tmp)
    save_folder(work, quantized, tmp, method.method, weights.tokenizer_files)
    tmp.rename(folder)
    del work
    log.info("%s: %s %d-bit group %s quantized in %.1f s", method.name, method.method, method.nbits(),
             method.group() or "channel", seconds)
    row = scorer.score(method.name, folder, None)
    row.update({"method": method.method, "bits": method.nbits(), "group_size": method.group() or "channel",
                "bits_per_weight": round(bits_per_weight(quantized), 4),
                "file_bytes": (folder / MODEL_FILE).stat().st_size, "quantize_seconds": round(seconds, 3),
                "path": method.name})
    return row


def run_gguf(ctx: StageContext, kind: str, weights: ModelWeights, scorer: Scorer) -> dict[str, Any]:
    from lmhpc.exchange.gguf_export import write_gguf

    name = f"gguf-{kind}"
    folder = ctx.stage_dir / name
    _fresh(folder)
    started = time.perf_counter()
    write_gguf(weights, folder / "model.gguf", kind, name=name)
    seconds = time.perf_counter() - started
    row = scorer.score(name, folder / "model.gguf", None)
    row.update({"method": f"gguf {kind}", "bits": None, "group_size": 32 if kind.startswith("q") else None,
                "bits_per_weight": round(gguf_bits_per_weight(folder / "model.gguf"), 4),
                "file_bytes": (folder / "model.gguf").stat().st_size, "quantize_seconds": round(seconds, 3),
                "path": f"{name}/model.gguf"})
    return row


def done_row(folder: Path) -> dict[str, Any] | None:
    marker = folder / DONE_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def finish(folder: Path, row: dict[str, Any]) -> None:
    write_json(folder / DONE_MARKER, row)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Models as rows: method, bits per weight, size, time to quantize, then the evaluate stage's score columns."""
    base = rows[0] if rows and rows[0]["name"] == FLOAT_ROW else None
    score_cols = columns(rows)
    head = ["model", "method", "bits/weight", "MB", "quantize s", *score_cols]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for row in rows:
        cells = [row["name"], row.get("method") or "–",
                 f"{row['bits_per_weight']:.3f}" if row.get("bits_per_weight") else "–",
                 f"{row['file_bytes'] / 1e6:.2f}" if row.get("file_bytes") else "–",
                 f"{row['quantize_seconds']:.1f}" if row.get("quantize_seconds") is not None else "–"]
        for col in score_cols:
            value, _ = cell(row, col)
            text = "–" if value is None else (f"{value:.4f}" if value < 100 else f"{value:.1f}")
            if base is not None and row is not base and col.endswith(" ppl") and value is not None:
                ref, _ = cell(base, col)
                if ref:
                    text += f" ({100 * (value - ref) / ref:+.2f}%)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(ctx: StageContext) -> dict[str, Any]:
    """Quantize with every method, export GGUF, score everything; returns the stage's stats."""
    cfg: QuantizeConfig = ctx.cfg.quantize
    started = time.time()
    torch.set_num_threads(cfg.threads or max(ctx.cfg.resources_for("quantize").cpus_per_task, 1))
    path, weights, tokenizer = source_weights(ctx, cfg)
    model = build_model(weights).eval()
    where = cfg.init_from and "quantize.init_from" or f"{path.name} ({path})"
    check_methods(cfg, model, where)
    calibration = calibration_windows(ctx, cfg, model)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    with Quarantine(ctx.stage_dir / "quarantine" / "texts.jsonl.zst") as quarantine:
        scorer = Scorer(ctx, cfg, quarantine)
        float_dir = ctx.stage_dir / FLOAT_ROW
        row = done_row(float_dir)
        if row is None:
            row = scorer.score(FLOAT_ROW, path, tokenizer)
            params = sum(p.numel() for p in model.parameters())
            row.update({"method": "float32", "bits": 32, "group_size": None, "bits_per_weight": 32.0,
                        "file_bytes": params * 4, "quantize_seconds": None, "path": str(path)})
            float_dir.mkdir(parents=True, exist_ok=True)
            finish(float_dir, row)
        rows.append(row)
        jobs: list[tuple[str, Any]] = [(m.name, m) for m in cfg.methods] + [(f"gguf-{k}", k) for k in cfg.gguf]
        for name, job in jobs:
            folder = ctx.stage_dir / name
            row = done_row(folder)
            if row is not None:
                skipped.append(name)
                rows.append(row)
                continue
            if ctx.should_stop():
                raise Preempted(f"preemption signal: stopping before {name} ({len(rows) - 1} done)")
            if isinstance(job, MethodSpec):
                row = run_method(ctx, cfg, job, model, weights, calibration, scorer)
            else:
                row = run_gguf(ctx, job, weights, scorer)
            finish(folder, row)
            rows.append(row)
        quarantined = dict(quarantine.counts)
    table = markdown(rows)
    results = {"source": str(path), "models": rows, "table": table,
               "calibration": None if calibration is None else list(calibration.shape)}
    write_json(ctx.stage_dir / RESULTS_JSON, results)
    write_text(ctx.stage_dir / RESULTS_MD, table)
    log.info("results:\n%s", table)
    log_table(ctx.tracker, rows, step=1)
    ctx.tracker.log({"quantize": {r["name"]: {"bits_per_weight": r["bits_per_weight"], "file_mb": r["file_bytes"] / 1e6,
                                              "quantize_s": r["quantize_seconds"] or 0.0} for r in rows}},
                    step=len(rows) + 1)
    return {"step": len(rows) + 2, "source": str(path), "models": [r["name"] for r in rows],
            "resumed": skipped, "quarantined_text_records": quarantined, "seconds": round(time.time() - started, 3),
            "results": str(ctx.stage_dir / RESULTS_JSON)}
