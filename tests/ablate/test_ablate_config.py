"""The ablate stage's config: the variants it makes, the config each variant's data is made under, errors that
name the key, and the comparison's arithmetic."""

from __future__ import annotations

import math

import pytest

from lmhpc.ablate.compare import compare, difference, markdown
from lmhpc.ablate.variants import BASELINE, build_variants, variant_config
from lmhpc.config import ConfigError, load_config
from tests.conftest import write_config


def _config(tmp_path, ablate: dict, **extra):
    data = {
        "run": {"name": "a", "runs_dir": str(tmp_path / "runs"), "stages": ["ablate"]},
        "wandb": {"mode": "disabled"},
        "curate": {
            "inputs": [{"path": "web/*.jsonl", "source": "web"}, {"path": "prose/*.jsonl"},
                       {"path": "code/*.jsonl", "source": "code", "weight": 0.5}],
            "filters": {"per_source": {"code": {"gopher_quality": {"enabled": False}, "code": {"enabled": True}}}},
        },
        "ablate": {"eval": {"tasks": ["piqa"], "limit": 5}, **ablate},
        **extra,
    }
    return load_config(write_config(tmp_path / "c.yaml", data))


def test_variants_from_config_in_order(tmp_path):
    cfg = _config(tmp_path, {"without": ["c4", "code"], "without_dedup": True, "sources": True,
                             "mixes": {"webby": {"web": 3, "prose": 1}}})
    variants = build_variants(cfg.ablate, cfg)
    assert [v.name for v in variants] == [BASELINE, "without_c4", "without_code", "without_dedup", "only_code",
                                          "only_prose", "only_web", "mix_webby"]
    assert [v.kind for v in variants] == ["baseline", "without_filter", "without_filter", "without_dedup", "source",
                                          "source", "source", "mix"]
    assert all(v.dedup for v in variants if v.name != "without_dedup")
    assert variants[-1].mix == {"prose": 1.0, "web": 3.0}


def test_variant_config_changes_one_thing_and_moves_the_run_folder(tmp_path):
    cfg = _config(tmp_path, {"without": ["code", "gopher_quality"], "sources": True, "mixes": {"m": {"web": 1}}})
    by_name = {v.name: v for v in build_variants(cfg.ablate, cfg)}
    stage_dir = cfg.run_dir / "ablate"

    base = variant_config(cfg, by_name[BASELINE], stage_dir)
    assert base.run_dir == stage_dir / "variants" / BASELINE
    assert base.curate.filters == cfg.curate.filters and base.tokenize == cfg.tokenize
    # every input names its source, as curate would default it (the folder's name)
    assert [s.source for s in base.curate.inputs] == ["web", "prose", "code"]
    assert cfg.curate.inputs[1].source is None  # the run's own config is untouched

    # a filter turned on only by a per-source override is off there too
    no_code = variant_config(cfg, by_name["without_code"], stage_dir).curate.filters
    assert not no_code.code.enabled and no_code.per_source["code"]["code"]["enabled"] is False
    assert no_code.per_source["code"]["gopher_quality"] == {"enabled": False}
    assert cfg.curate.filters.per_source["code"]["code"]["enabled"] is True
    no_gq = variant_config(cfg, by_name["without_gopher_quality"], stage_dir).curate.filters
    assert not no_gq.gopher_quality.enabled and no_gq.c4.enabled

    only = variant_config(cfg, by_name["only_prose"], stage_dir)
    assert [s.path for s in only.curate.inputs] == ["prose/*.jsonl"]

    mix = variant_config(cfg, by_name["mix_m"], stage_dir)
    assert mix.tokenize.blend_mix == "weights"
    assert mix.tokenize.blend_weights == {"code": 0.0, "prose": 0.0, "web": 1.0}  # unnamed sources get none


@pytest.mark.parametrize(("ablate", "key", "message"), [
    ({"without": ["nope"]}, "ablate.without[0]", "unknown filter 'nope'"),
    ({"without": ["c4", "c4"]}, "ablate.without[1]", "listed twice"),
    ({"without": ["length"]}, "ablate.without[0]", "off in curate.filters"),
    ({"mixes": {"m": {"web": 1, "wiki": 2}}}, "ablate.mixes.m.wiki", "unknown source 'wiki'"),
    ({"mixes": {"m": {"web": -1}}}, "ablate.mixes.m.web", ">= 0"),
    ({"mixes": {"m": {"web": 0}}}, "ablate.mixes.m", "sum to 0"),
    ({"mixes": {"a b": {"web": 1}}}, "ablate.mixes.a b", "letters, digits"),
    ({}, "ablate.without", "no variant"),
    ({"without_dedup": True, "probe": {"model": {"dim": 30, "n_heads": 4}}}, "ablate.probe.model.dim",
     "not divisible"),
    ({"without_dedup": True, "probe": {"train": {"steps": 0}}}, "ablate.probe.train.steps", ">= 1"),
    ({"without_dedup": True, "eval": {"tasks": ["nope"]}}, "ablate.eval.tasks[0]", "unknown task"),
    ({"without_dedup": True, "eval": {"models": ["x"]}}, "ablate.eval.models", "probes are the models"),
    ({"without_dedup": True, "eval": {"tasks": []}}, "ablate.eval", "nothing to score"),
    ({"without_dedup": True, "tokenizer": "missing.model"}, "ablate.tokenizer", "no tokenizer model"),
    ({"without_dedup": True, "probe": {"nope": 1}}, "ablate.probe.nope", ""),
])
def test_config_errors_name_the_key(tmp_path, ablate, key, message):
    with pytest.raises(ConfigError) as info:
        _config(tmp_path, ablate)
    assert info.value.key == key, str(info.value)
    assert message in str(info.value)


def test_one_source_cannot_be_split(tmp_path):
    data = {"run": {"name": "a", "runs_dir": str(tmp_path / "runs"), "stages": ["ablate"]},
            "curate": {"inputs": [{"path": "x/*.jsonl", "source": "web"}]}, "ablate": {"sources": True}}
    with pytest.raises(ConfigError, match="ablate.sources"):
        load_config(write_config(tmp_path / "c.yaml", data))


def test_source_names_must_be_plain_for_source_variants(tmp_path):
    data = {"run": {"name": "a", "runs_dir": str(tmp_path / "runs"), "stages": ["ablate"]},
            "curate": {"inputs": [{"path": "x/*.jsonl", "source": "web"}, {"path": "y/*.jsonl", "source": "../up"}]},
            "ablate": {"sources": True}}
    with pytest.raises(ConfigError, match="ablate.sources.*'../up'"):
        load_config(write_config(tmp_path / "c.yaml", data))


def test_stage_reads_the_tokenizer_unless_given_a_model(tmp_path):
    from lmhpc.stages import STAGES

    cfg = _config(tmp_path, {"without_dedup": True})
    assert STAGES["ablate"].reads_for(cfg) == ("tokenizer",)
    (tmp_path / "sp.model").write_bytes(b"x")
    cfg = _config(tmp_path, {"without_dedup": True, "tokenizer": "sp.model"})
    assert STAGES["ablate"].reads_for(cfg) == ()


def test_difference_and_its_standard_error():
    d = difference(0.40, 0.03, 0.30, 0.04)
    assert d["diff"] == pytest.approx(0.10) and d["diff_stderr"] == pytest.approx(0.05) and d["exceeds"] is True
    d = difference(0.32, 0.03, 0.30, 0.04)
    assert d["exceeds"] is False
    assert difference(0.3, None, 0.2, 0.1) == {"diff": pytest.approx(0.1), "diff_stderr": None, "exceeds": None}
    assert difference(None, 0.1, 0.2, 0.1)["diff"] is None
    # one item of 188 changed: the difference equals its paired error, which is not "beyond" it
    from lmhpc.ablate.compare import exceeds
    from lmhpc.evaluate.multiple_choice import mean_stderr

    n = 188
    diffs = [1.0] + [0.0] * (n - 1)
    assert not exceeds(sum(diffs) / n, mean_stderr(diffs)) and exceeds(2 / n, mean_stderr(diffs))


def test_comparison_marks_what_exceeds_its_standard_error(tmp_path):
    cfg = _config(tmp_path, {"without": ["c4"], "without_dedup": True})
    variants = build_variants(cfg.ablate, cfg)

    def row(name, bpb, acc):
        return {"name": name, "perplexity": {"held": {"bits_per_byte": bpb, "bits_per_byte_stderr": 0.02,
                                                      "perplexity": 9.0}},
                "tasks": {"piqa": {"metrics": ["acc", "acc_norm"], "acc": acc, "acc_stderr": 0.03,
                                   "acc_norm": acc, "acc_norm_stderr": None}}}

    rows = [row(BASELINE, 2.0, 0.5), row("without_c4", 2.1, 0.52), row("without_dedup", 1.99, 0.6)]
    out = compare(variants, rows, {BASELINE: {"tokens": 10}}, {"steps": 3, "token_budget": 96, "seed": 1})
    assert [m["name"] for m in out["metrics"]] == ["held bpb", "piqa acc", "piqa acc_norm"]  # ppl has no stderr
    base, no_c4, no_dedup = out["variants"]
    assert "diff" not in base["scores"]["held bpb"] and base["tokens"] == 10
    assert no_c4["scores"]["held bpb"]["exceeds"] and no_c4["scores"]["held bpb"]["direction"] == "worse"
    assert no_c4["scores"]["held bpb"]["diff_stderr"] == pytest.approx(math.sqrt(2) * 0.02)
    assert no_c4["scores"]["piqa acc"]["exceeds"] is False
    assert no_c4["scores"]["piqa acc_norm"]["exceeds"] is None  # no stderr: no verdict
    assert no_dedup["scores"]["piqa acc"]["direction"] == "better"
    assert [(d["variant"], d["metric"]) for d in out["exceeding"]] == [("without_c4", "held bpb"),
                                                                       ("without_dedup", "piqa acc")]
    table = markdown(out)
    assert "| without_c4 |" in table and "(Δ +0.1000 ± 0.0283 *)" in table and "(Δ +0.0200 ± 0.0424)" in table
    assert "- without_dedup: piqa acc +0.1000 ± 0.0424 (better)" in table


def test_paired_stderr_is_the_spread_of_per_item_differences():
    from lmhpc.ablate.scoring import paired_stderr

    base = {"perplexity": {"h": [[10.0 * (i + 1), 5, 40] for i in range(6)]},
            "tasks": {"t": {"acc": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]}}}
    shifted = {"perplexity": {"h": [[10.0 * (i + 1) + 2.0, 5, 40] for i in range(6)]},
               "tasks": {"t": {"acc": [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]}}}
    # every document's log-likelihood moved by the same amount: the difference is certain
    assert paired_stderr("h bpb", shifted, base) == pytest.approx(0.0, abs=1e-12)
    noisy = {"perplexity": {"h": [[10.0 * (i + 1) + (2.0 if i % 2 else 0.0), 5, 40] for i in range(6)]}, "tasks": {}}
    d = [0.0, 2.0] * 3
    expected = math.sqrt(sum((x - 1.0) ** 2 for x in d) / 5 / 6) / 40 / math.log(2)
    assert paired_stderr("h bpb", noisy, base) == pytest.approx(expected)
    diffs = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    mean = sum(diffs) / 6
    assert paired_stderr("t acc", shifted, base) == pytest.approx(
        math.sqrt(sum((x - mean) ** 2 for x in diffs) / 5) / math.sqrt(6))
    # other documents (another tokenizer, another set): no paired error
    other = {"perplexity": {"h": [[1.0, 6, 40]] * 6}, "tasks": {"t": {"acc": [1.0] * 5}}}
    assert paired_stderr("h bpb", other, base) is None and paired_stderr("t acc", other, base) is None
    assert paired_stderr("t acc_norm", shifted, base) is None


def test_preflight_names_missing_inputs_and_eval_files(tmp_path):
    from lmhpc.ablate.preflight import preflight

    cfg = _config(tmp_path, {"without_dedup": True, "eval": {
        "tasks": [], "perplexity": {"texts": [{"path": "held/*.jsonl"}]},
        "task_files": [{"name": "mine", "path": "mine.jsonl"}]}})
    problems = preflight(cfg)
    keys = [p.split(":", 1)[0] for p in problems]
    assert keys == ["curate.inputs[0].path", "curate.inputs[1].path", "curate.inputs[2].path",
                    "ablate.eval.perplexity.texts[0].path", "ablate.eval.task_files[0].path"], problems
    for name in ("web", "prose", "code", "held"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.jsonl").write_text('{"text": "a b c"}\n')
    (tmp_path / "mine.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "gold": 0}\n')
    assert preflight(cfg) == []


def test_units_change_with_the_data_settings_not_with_what_does_not_matter(tmp_path):
    from lmhpc.ablate import stage
    from lmhpc.context import StageContext

    def units(**extra):
        cfg = _config(tmp_path, {"without": ["c4"], "without_dedup": True}, **extra)
        return stage.units(StageContext(cfg=cfg, stage="ablate", input_dirs={"tokenizer": tmp_path}))

    base = units()
    assert [u.split("@")[0] for u in base] == [BASELINE, "without_c4", "without_dedup"]
    assert units(curate={"inputs": [{"path": "web/*.jsonl", "source": "web"}, {"path": "prose/*.jsonl"},
                                    {"path": "code/*.jsonl", "source": "code", "weight": 0.5}],
                         "filters": {"per_source": {"code": {"gopher_quality": {"enabled": False},
                                                             "code": {"enabled": True}}}},
                         "progress_every_s": 5}) == base
    changed = units(dedup={"exact": {"enabled": False}})
    assert all(a != b for a, b in zip(changed, base))
    seeded = units(run={"name": "a", "runs_dir": str(tmp_path / "runs"), "stages": ["ablate"], "seed": 9})
    assert all(a != b for a, b in zip(seeded, base))
