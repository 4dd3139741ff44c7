"""The edges of bad input in the curate stage: empty text, oversized documents, files that are not data,
damaged compressed files, and the bad-input limit."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest
from curate_corpus import prose, write_jsonl

from lmhpc.config import load_config
from lmhpc.context import StageContext
from lmhpc.curate import stage
from lmhpc.curate.bad_input import TooMuchBadInput
from lmhpc.data.quarantine import read_quarantine
from lmhpc.data.writers import iter_jsonl_docs
from lmhpc.runner import StageFailed, run_stage


def config(make_config, inputs: list[dict], **curate):
    return load_config(make_config({"run": {"stages": ["curate"]}, "wandb": {"mode": "disabled"},
                                    "curate": {"inputs": inputs, **curate}}))


def stats_of(cfg) -> dict:
    return json.loads((cfg.run_dir / "curate" / "stats.json").read_text())


def quarantined(cfg) -> list[dict]:
    return [e for p in sorted((cfg.run_dir / "curate" / "quarantine").glob("*.jsonl")) for e in read_quarantine(p)]


def balanced(stats: dict) -> bool:
    return stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())


def test_empty_and_whitespace_text_is_dropped_not_quarantined(tmp_path: Path, make_config) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": "g1", "text": prose(1)}, {"id": "e1", "text": ""},
                                              {"id": "e2", "text": " \n\t "}, {"id": "g2", "text": prose(2)}])
    cfg = config(make_config, [{"path": "in/*.jsonl", "source": "web"}], samples_per_reason=5)
    assert run_stage(cfg, "curate") == 0
    stats = stats_of(cfg)
    assert stats["quarantined"] == 0 and quarantined(cfg) == []
    assert stats["dropped"] == {"empty_text": 2} and stats["docs_out"] == 2 and stats["docs_in"] == 4
    assert balanced(stats)
    assert stats["per_source"]["web"]["dropped"] == {"empty_text": 2}
    assert stats["samples"]["empty_text"] == 2


def test_an_oversized_document_keeps_a_capped_prefix_and_its_length(tmp_path: Path, make_config) -> None:
    big = tmp_path / "in" / "huge.jsonl"
    big.parent.mkdir(parents=True)
    with open(big, "w") as fh:
        fh.write(json.dumps({"id": "ok", "text": prose(3)}) + "\n")
        fh.write('{"id": "huge", "text": "' + "a" * (50 * 2**20) + '"}\n')
    cfg = config(make_config, [{"path": "in/*.jsonl"}], max_bad_fraction=0.9)
    assert run_stage(cfg, "curate") == 0
    (entry,) = quarantined(cfg)
    assert entry["reason"] == "too_large" and entry["raw_truncated"]
    assert entry["raw_bytes"] == 50 * 2**20 + len('{"id": "huge", "text": ""}')
    assert len(entry["raw"]) <= 4096
    assert sum(p.stat().st_size for p in (cfg.run_dir / "curate" / "quarantine").iterdir()) < 64 * 2**10


def test_a_file_of_unknown_format_mid_stage_is_quarantined_by_name(tmp_path: Path, make_config) -> None:
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"id": f"g{i}", "text": prose(i)} for i in range(5)])
    (tmp_path / "in" / "README.md").write_text("# About this corpus\n")
    cfg = config(make_config, [{"path": "in/*"}], max_bad_fraction=0.5)
    assert run_stage(cfg, "curate") == 0
    stats = stats_of(cfg)
    assert stats["quarantine_reasons"] == {"unreadable_file": 1} and stats["docs_out"] == 5 and balanced(stats)
    (entry,) = quarantined(cfg)
    assert entry["location"].endswith("README.md") and "cannot tell the format" in entry["detail"]


def test_a_corrupt_member_in_the_middle_costs_only_that_member(tmp_path: Path, make_config) -> None:
    parts = [gzip.compress("".join(json.dumps({"id": f"m{m}-{i}", "text": prose(m * 10 + i)}) + "\n"
                                   for i in range(5)).encode(), mtime=0) for m in range(3)]
    damaged = bytearray(parts[1])
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "m.jsonl.gz").write_bytes(parts[0] + bytes(damaged) + parts[2])
    cfg = config(make_config, [{"path": "in/*.jsonl.gz"}], max_bad_fraction=0.5)
    assert run_stage(cfg, "curate") == 0
    stats = stats_of(cfg)
    assert stats["quarantine_reasons"] == {"corrupt": 1} and balanced(stats)
    kept = {d.id for part in sorted((cfg.run_dir / "curate" / "data").glob("part-*")) for d in iter_jsonl_docs(part)}
    assert {f"m{m}-{i}" for m in (0, 2) for i in range(5)} <= kept, "the members around the damage are read"
    (entry,) = quarantined(cfg)
    assert entry["offset"] == len(parts[0]) and entry["skipped_bytes"] == len(parts[1])


def unit_context(cfg) -> tuple[StageContext, str]:
    ctx = StageContext(cfg=cfg, stage="curate")
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    [unit] = stage.units(ctx)
    return ctx, unit


def test_too_much_bad_input_fails_the_unit_as_soon_as_the_limit_is_passed(tmp_path: Path, make_config) -> None:
    records: list[dict | str] = [{"id": f"g{i}", "text": prose(i)} for i in range(150)]
    records += ["{broken"] * 5000 + [{"id": f"late{i}", "text": prose(i)} for i in range(50)]
    write_jsonl(tmp_path / "in" / "bad.jsonl", records)
    cfg = config(make_config, [{"path": "in/*.jsonl", "source": "web"}], max_bad_fraction=0.1)
    ctx, unit = unit_context(cfg)
    with pytest.raises(TooMuchBadInput) as failed:
        stage.process_unit(ctx, 0, unit)
    exc = failed.value
    assert isinstance(exc, StageFailed)
    partial = exc.stats
    assert partial["quarantined"] == 17 and partial["docs_in"] == 167, "stops at the first record over the limit"
    assert balanced(partial) and partial["quarantine_reasons"] == {"invalid_json": 17}
    assert partial["per_source"]["web"]["docs_in"] == 167
    message = str(exc)
    assert "unit 0" in message and "bad.jsonl" in message and "17 of 167" in message
    assert "curate.max_bad_fraction=0.1" in message
    # the evidence is kept, and no output of the failed unit is left behind
    assert len(list(read_quarantine(ctx.stage_dir / "quarantine" / "00000.jsonl"))) == 17
    assert not list((ctx.stage_dir / "data").glob("part-00000-*"))


def test_a_few_bad_records_at_the_start_do_not_fail_a_unit(tmp_path: Path, make_config) -> None:
    records: list[dict | str] = ["{broken"] * 3 + [{"id": f"g{i}", "text": prose(i)} for i in range(200)]
    write_jsonl(tmp_path / "in" / "ok.jsonl", records)
    cfg = config(make_config, [{"path": "in/*.jsonl"}], max_bad_fraction=0.05)
    ctx, unit = unit_context(cfg)
    stats = stage.process_unit(ctx, 0, unit)
    assert stats["quarantined"] == 3 and stats["docs_in"] == 203


def test_the_stage_wide_limit_still_holds_and_carries_the_stats(tmp_path: Path, make_config, caplog) -> None:
    write_jsonl(tmp_path / "in" / "bad.jsonl", [{"id": "g", "text": prose(1)}, "{oops", "{oops again"])
    cfg = config(make_config, [{"path": "in/*.jsonl"}], max_bad_fraction=0.2)
    with caplog.at_level(logging.ERROR):
        assert run_stage(cfg, "curate") == 1
    assert "2 of 3 records are bad" in caplog.text and "curate.max_bad_fraction=0.2" in caplog.text
    ctx = StageContext(cfg=cfg, stage="curate")
    with pytest.raises(TooMuchBadInput) as failed:
        stage.finalize(ctx, {"units": 1, "docs_in": 3, "docs_out": 1, "quarantined": 2, "dropped": {},
                             "quarantine_reasons": {"invalid_json": 2}})
    assert failed.value.stats["quarantined"] == 2
