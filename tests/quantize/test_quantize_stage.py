"""The quantize stage end to end on a tiny pretrain run: every method's packed folder, GGUF exports, the table
scored with the evaluate library, resume after a preemption, and bad input refused before work, by key."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmhpc.config import ConfigError, load_config
from lmhpc.context import StageContext
from lmhpc.launch.preempt import Preempted
from lmhpc.runner import run_stage
from tests.train.fixtures import make_tokenized, sample_texts, tiny_pretrain

PRETRAIN = tiny_pretrain(train={"steps": 4}, checkpoint={"interval": 4, "keep_last": 1}, model={"max_seq_len": 256})
METHODS = [
    {"name": "rtn-int4", "method": "rtn", "bits": 4, "group_size": 32},
    {"name": "gptq-int4", "method": "gptq", "bits": 4, "group_size": 32, "act_order": True, "static_groups": True},
    {"name": "nf4", "method": "nf4"},
    {"name": "int8", "method": "int8"},
]
QUANTIZE = {"methods": METHODS, "gguf": ["q4_0"], "calibration": {"sequences": 6, "seq_len": 32},
            "eval": {"tasks": ["arc_easy"], "limit": 4, "perplexity": {"texts": [{"path": "heldout.jsonl"}],
                                                                         "lambada": 0}}}


@pytest.fixture(scope="module")
def run_base(tmp_path_factory):
    """A run folder with tokenizer, tokenize and a pretrain stage."""
    base = tmp_path_factory.mktemp("quantize-run")
    make_tokenized(base / "runs" / "q")
    (base / "heldout.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts(4, seed=9)))
    config = write_config(base, "pretrain", {}, stages=["pretrain"])
    assert run_stage(load_config(config), "pretrain") == 0
    return base


def write_config(base, name: str, quantize: dict, stages: list[str] | None = None, pretrain: dict | None = None,
                 **sections: dict):
    config = base / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "run": {"name": "q", "runs_dir": str(base / "runs"), "stages": stages or ["quantize"]},
        "wandb": {"mode": "disabled"}, "pretrain": pretrain or PRETRAIN, "quantize": quantize, **sections}))
    return config


@pytest.mark.slow
def test_stage_writes_every_method_scores_them_and_resumes(run_base, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = load_config(write_config(run_base, "quantize", QUANTIZE))
    # a preemption signal before the first method: the float row is kept, the job stops for requeue
    from lmhpc.quantize.stage import run

    ctx = StageContext(cfg, "quantize")
    ctx.flag.set("test")
    with pytest.raises(Preempted):
        run(ctx)
    stage = cfg.run_dir / "quantize"
    assert (stage / "float" / "DONE").exists() and not (stage / "rtn-int4").exists()
    assert run_stage(cfg, "quantize") == 0
    results = json.loads((stage / "results.json").read_text())
    rows = {r["name"]: r for r in results["models"]}
    assert list(rows) == ["float", "rtn-int4", "gptq-int4", "nf4", "int8", "gguf-q4_0"]
    assert rows["rtn-int4"]["bits_per_weight"] == pytest.approx(4 + 64 / 32)
    assert rows["nf4"]["bits_per_weight"] == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), rel=0.01)
    assert 8 + 64 / 192 < rows["int8"]["bits_per_weight"] < 8 + 64 / 64  # scale + zero point per row of 64 or 192
    assert rows["gguf-q4_0"]["bits_per_weight"] == pytest.approx(4.5)
    base_ppl = rows["float"]["perplexity"]["heldout"]["perplexity"] if "heldout" in rows["float"]["perplexity"] \
        else next(iter(rows["float"]["perplexity"].values()))["perplexity"]
    for name, row in rows.items():
        ppl = next(iter(row["perplexity"].values()))["perplexity"]
        assert 1 < ppl < 3 * base_ppl, (name, ppl, base_ppl)
        assert row["tasks"]["arc_easy"]["items"] + sum(row["tasks"]["arc_easy"]["skipped"].values()) == 4
        assert (stage / name / "DONE").exists()
    int8_ppl = next(iter(rows["int8"]["perplexity"].values()))["perplexity"]
    assert abs(int8_ppl - base_ppl) / base_ppl < 0.02
    for name in ("rtn-int4", "gptq-int4", "nf4", "int8"):
        assert rows[name]["file_bytes"] < rows["float"]["file_bytes"]
    assert "| rtn-int4 | rtn | 6.000 |" in (stage / "results.md").read_text()
    # the packed folders open through load_model with quantized layers
    from lmhpc.exchange import load_model
    from lmhpc.quantize.qlinear import NF4Linear, QuantLinear

    loaded = load_model(stage / "gptq-int4")
    assert isinstance(loaded.model.layers["0"].attention.wq, QuantLinear)
    assert isinstance(load_model(stage / "nf4").model.layers["1"].feed_forward.w2, NF4Linear)
    # a rerun skips finished methods; a method whose marker is gone is redone, identically
    from lmhpc.quantize.packed import read_metadata

    def packed(name):  # tensors and header metadata (safetensors writes the header's keys in no fixed order)
        path = stage / name / "model.safetensors"
        return load_file(str(path)), read_metadata(path)

    before = packed("rtn-int4")
    (stage / "rtn-int4" / "DONE").unlink()
    (stage / "DONE").unlink()  # the stage as a preemption during rtn-int4 would leave it
    assert run_stage(cfg, "quantize") == 0
    stats = json.loads((stage / "stats.json").read_text())
    assert set(stats["resumed"]) == {"gptq-int4", "nf4", "int8", "gguf-q4_0"}
    after = packed("rtn-int4")
    assert after[1] == before[1] and after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])


def test_gptq_calibration_is_a_seeded_sample_of_the_shards(run_base):
    from lmhpc.quantize.calibration import CalibrationError, sample_windows, stage_prefixes

    prefixes = stage_prefixes(run_base / "runs" / "q" / "tokenize")
    assert len(prefixes) == 2
    a = sample_windows(prefixes, 5, 16, seed=3, vocab_size=96)
    assert a.shape == (5, 16) and a.dtype == torch.long
    assert torch.equal(a, sample_windows(prefixes, 5, 16, seed=3, vocab_size=96))
    assert not torch.equal(a, sample_windows(prefixes, 5, 16, seed=4, vocab_size=96))
    with pytest.raises(CalibrationError, match="quantize.calibration.seq_len"):
        sample_windows(prefixes, 2, 10**7, seed=0, vocab_size=96)
    with pytest.raises(CalibrationError, match="quantize.calibration"):
        sample_windows([], 2, 8, seed=0, vocab_size=96)
    with pytest.raises(CalibrationError, match="vocabulary"):
        sample_windows(prefixes, 5, 16, seed=3, vocab_size=4)


@pytest.mark.parametrize("methods,key", [
    ([{"name": "a"}, {"name": "b", "method": "rtn"}, {"name": "c", "method": "awq"}], "quantize.methods[2].method"),
    ([{"name": "a", "group_size": 0}, {"name": "b", "method": "gptq", "group_size": 48}],
     "quantize.methods[1].group_size"),
    ([{"name": "a", "method": "rtn", "bits": 5}], "quantize.methods[0].bits"),
    ([{"name": "a", "method": "nf4", "bits": 3}], "quantize.methods[0].bits"),
    ([{"name": "a", "method": "int8", "group_size": 32}], "quantize.methods[0].group_size"),
    ([{"name": "a", "method": "gptq", "group_size": 32, "act_order": True}], "quantize.methods[0].static_groups"),
    ([{"name": "a"}, {"name": "a", "method": "nf4"}], "quantize.methods[1].name"),
    ([{"name": "../x"}], "quantize.methods[0].name"),
])
def test_bad_methods_fail_at_load_naming_the_key(tmp_path, methods, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(write_config(tmp_path, "bad", {"methods": methods}, stages=["pretrain", "quantize"]))


def test_other_architectures_and_missing_calibration_fail_before_work(tmp_path, run_base):
    moe = {**PRETRAIN, "model": {**PRETRAIN["model"], "moe": {"num_experts": 4}}}
    with pytest.raises(ConfigError, match="dense"):
        load_config(write_config(tmp_path, "moe", {"methods": [{"name": "a"}]}, stages=["pretrain", "quantize"],
                                 pretrain=moe))
    mamba = {**PRETRAIN, "model": {**PRETRAIN["model"], "layer_pattern": "MA"}}
    with pytest.raises(ConfigError, match="quantize.methods.0.*layer_pattern"):
        load_config(write_config(tmp_path, "mamba", {"methods": [{"name": "a"}]}, stages=["pretrain", "quantize"],
                                 pretrain=mamba))
    with pytest.raises(ConfigError, match="quantize.gguf.0"):
        load_config(write_config(tmp_path, "gg", {"methods": [], "gguf": ["q2_k"]}))
    from lmhpc.quantize.preflight import preflight

    # GPTQ with no tokenize stage in the run or its folder
    cfg = load_config(write_config(tmp_path, "nocal", {"methods": [{"name": "g", "method": "gptq"}]}))
    assert any(p.startswith("quantize.calibration:") for p in preflight(cfg))
    cfg = load_config(write_config(tmp_path, "nofile", {"methods": [{"name": "g", "method": "gptq"}],
                                                        "init_from": "nowhere",
                                                        "calibration": {"prefixes": ["nothing"]}}))
    problems = preflight(cfg)
    assert any(p.startswith("quantize.init_from:") for p in problems)
    assert any(p.startswith("quantize.calibration.prefixes[0]:") for p in problems)
    # a model of another architecture named by init_from: the preflight reads it
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.weights import ModelWeights
    from lmhpc.model.args import ModelArgs
    from lmhpc.model.transformer import Transformer

    args = ModelArgs(vocab_size=96, dim=64, n_layers=2, n_heads=4, layer_pattern="MA", max_seq_len=32)
    model = Transformer(args)
    write_consolidated(ModelWeights(model.state_dict(), args, {}, tmp_path, {}), tmp_path / "hybrid")
    cfg = load_config(write_config(tmp_path, "hybrid", {"methods": [{"name": "a"}], "init_from": "hybrid"}))
    assert any("quantize.methods[0]" in p and "dense" in p for p in preflight(cfg))
    # a run that only quantizes is checked against the pretrain stage already in its folder
    with pytest.raises(ConfigError, match=r"quantize.methods\[0\].group_size.*24"):
        load_config(write_config(run_base, "g24", {"methods": [{"name": "a", "method": "rtn", "group_size": 24}]}))


def test_reads_the_latest_model_stage_of_the_run_or_none_with_init_from(tmp_path):
    from lmhpc.stages import STAGES

    gptq = {"methods": [{"name": "g", "method": "gptq", "group_size": 32}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello"}]}) + "\n")
    cfg = load_config(write_config(tmp_path, "chain", gptq, stages=["pretrain", "sft", "quantize"],
                                   sft={"data": ["chat.jsonl"]}))
    assert STAGES["quantize"].reads_for(cfg) == ("sft", "tokenize", "tokenizer")
    cfg = load_config(write_config(tmp_path, "rtn", {"methods": [{"name": "r", "group_size": 32}]},
                                   stages=["pretrain", "quantize"]))
    assert STAGES["quantize"].reads_for(cfg) == ("pretrain", "tokenizer")  # no GPTQ: no calibration shards
    cfg = load_config(write_config(tmp_path, "init", {**gptq, "init_from": "model"}, stages=["pretrain", "quantize"]))
    assert STAGES["quantize"].reads_for(cfg) == ("tokenize",)
