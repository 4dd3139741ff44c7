"""The demo config end to end with the local executor, on a slice of the shipped sample corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmhpc.track import offline_run_dirs, read_history

REPO = Path(__file__).resolve().parent.parent
STAGES = ["curate", "dedup", "tokenizer", "tokenize", "pretrain", "constitutional", "sft", "ai_feedback", "reference",
          "dpo", "evaluate", "quantize", "medusa"]
MODELS = ["pretrain/step-12", "sft/step-4", "dpo/step-2"]


@pytest.mark.slow
def test_demo_chain_on_a_slice_of_the_sample(tmp_path):
    inputs = (
        '[{path: "../data/sample/web/part-000.warc.gz", source: web, format: warc},'
        ' {path: "../data/sample/prose/part-00[01].jsonl.zst", source: prose},'
        ' {path: "../data/sample/code/part-000.jsonl.zst", source: code},'
        ' {path: "../data/sample/license/part-000.jsonl.zst", source: license, weight: 0.2}]'
    )
    overrides = [
        f"run.runs_dir={tmp_path}", f"curate.inputs={inputs}",
        "tokenizer.vocab_size=2000", "tokenizer.sample_mb=4",
        "tokenizer.analysis.heldout_mb=0.5", "tokenizer.analysis.per_source_sample_mb=1",
        "pretrain.model.dim=64", "pretrain.model.n_heads=4", "pretrain.model.n_kv_heads=2",
        "pretrain.train.steps=12", "pretrain.optimizer.warmup_steps=2",
        "pretrain.train.seq_len=64", "pretrain.model.max_seq_len=64",
        "pretrain.train.micro_batch_size=4", "pretrain.checkpoint.interval=6", "pretrain.metrics.log_every=2",
        "pretrain.model.max_seq_len=256", "pretrain.eval.interval=6", "pretrain.eval.max_tokens=2048",
        "evaluate.tasks=[arc_easy, piqa]", "evaluate.limit=20", "evaluate.perplexity.lambada=5",
        "evaluate.perplexity.max_docs=5",
        "constitutional.max_prompts=4", "constitutional.chunk_size=2", "constitutional.rounds=1",
        "constitutional.sampling.max_new_tokens=8", "ai_feedback.chunk_size=2", "ai_feedback.sampling.max_new_tokens=8",
        "sft.train.steps=4", "sft.train.warmup_steps=1", "sft.train.checkpoint_interval=2",
        "sft.train.max_len=128", "sft.train.log_every=1",
        "dpo.train.steps=2", "dpo.train.warmup_steps=0", "dpo.train.checkpoint_interval=2",
        "dpo.train.max_len=128", "dpo.train.log_every=1",
        "quantize.methods=[{name: rtn-int4, method: rtn, bits: 4, group_size: 64},"
        " {name: gptq-int4, method: gptq, bits: 4, group_size: 64}, {name: nf4, method: nf4},"
        " {name: int8, method: int8}]",
        "quantize.gguf=[q4_0]", "quantize.calibration.sequences=4", "quantize.calibration.seq_len=64",
        "medusa.steps=4", "medusa.batch_size=2", "medusa.seq_len=32", "medusa.warmup=1",
        "quantize.eval.limit=10", "quantize.eval.perplexity.max_docs=3", "quantize.eval.perplexity.max_tokens=2000",
    ]
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(REPO / "configs" / "demo.yaml"), *overrides],
                         capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    run = tmp_path / "demo"
    for stage in STAGES:
        assert (run / stage / "DONE").exists(), stage
        stats = json.loads((run / stage / "stats.json").read_text())
        if stage in ("curate", "dedup"):
            assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())
        assert offline_run_dirs(run / stage), f"{stage} wrote no W&B run"
    curate = json.loads((run / "curate" / "stats.json").read_text())
    dedup = json.loads((run / "dedup" / "stats.json").read_text())
    assert dedup["docs_in"] == curate["docs_out"]
    assert {"web", "prose", "code"} <= set(curate["per_source"])
    assert (run / "tokenizer" / "tokenizer.model").exists()
    blend = json.loads((run / "tokenize" / "blend.json").read_text())
    assert blend["data_path"]
    ckpts = sorted((run / "pretrain" / "checkpoints").glob("step-*"))
    assert ckpts, "pretrain saved no checkpoint"
    losses = [r["loss"] for r in read_history(offline_run_dirs(run / "pretrain")[0]) if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    status = json.loads(subprocess.run([sys.executable, "-m", "lmhpc", "status", str(run), "--json"],
                                       capture_output=True, text=True, cwd=REPO).stdout)
    assert [r["state"] for r in status] == ["done"] * len(STAGES)
    heldout = json.loads((run / "pretrain" / "stats.json").read_text())["heldout"]
    assert [h["step"] for h in heldout] == [6, 12]
    results = json.loads((run / "evaluate" / "results.json").read_text())
    assert [row["name"] for row in results["models"]] == MODELS  # each model stage of the chain, side by side
    for row in results["models"]:
        assert {"prose_heldout", "lambada"} <= set(row["perplexity"])
        for task in ("arc_easy", "piqa"):
            assert row["tasks"][task]["items"] + sum(row["tasks"][task]["skipped"].values()) == 20
            assert row["tasks"][task]["items"] > 0
    # alignment: revisions became sft data, AI-feedback pairs dpo data
    assert (run / "constitutional" / "sft.jsonl").read_text().strip()
    assert (run / "ai_feedback" / "labels.jsonl").read_text().strip()
    dpo_metrics = [json.loads(line) for line in (run / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/chosen", "rewards/margins", "logps/rejected"} <= set(dpo_metrics[-1])
    # quantize: the dpo model in four formats, each scored
    quant = json.loads((run / "quantize" / "results.json").read_text())
    names = [r["name"] for r in quant["models"]]
    assert {"rtn-int4", "gptq-int4", "nf4", "int8"} <= set(names), names
    assert (run / "quantize" / "gguf-q4_0" / "model.gguf").exists()
    assert "arc_easy acc_norm" in (run / "evaluate" / "results.md").read_text()
    # the run's report, as tools/demo.sh writes it after the chain
    report = subprocess.run([sys.executable, "-m", "lmhpc", "report", str(run)], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (run / "report" / "index.html").read_text()
    assert "arc_easy" in page and "<script" not in page.split("</head>", 1)[1]
