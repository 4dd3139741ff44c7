"""Arbitrary input never crashes the curate stage, and every record is accounted for."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmhpc.config import load_config
from lmhpc.context import StageContext
from lmhpc.curate import stage
from lmhpc.curate.filters.chain import ChainSet
from lmhpc.curate.filters.config import CodeFilterConfig, FiltersConfig, LengthFilterConfig
from lmhpc.curate.filters.text import TextView
from lmhpc.data.documents import Document

ALL_FILTERS = FiltersConfig(code=CodeFilterConfig(enabled=True), length=LengthFilterConfig(enabled=True, min_words=1))
CHAIN = ChainSet(ALL_FILTERS, Path("."))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=400)
       | st.lists(st.sampled_from(["a", "the", "\n", "\n\n", ".", "...", "#", "-", "{", " ", "x" * 30, "é", "!"]),
                  max_size=200).map("".join))
def test_any_text_gets_a_verdict(text: str) -> None:
    doc = Document("d", text, "s", "https://example.org/x")
    for flt in CHAIN.default.filters:  # every filter sees every text, not only what earlier ones kept
        reason = flt(TextView(Document("d", text, "s", "https://example.org/x")))
        assert reason is None or reason.startswith(flt.name + "/")
    reason = CHAIN.default(doc)
    assert reason is None or "/" in reason
    json.dumps(doc.metadata, allow_nan=False)  # scores are plain JSON numbers


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=2000), compressed=st.booleans())
def test_arbitrary_bytes_through_a_unit(tmp_path: Path, make_config, raw: bytes, compressed: bool) -> None:
    name = "in.jsonl.gz" if compressed else "in.jsonl"
    data = gzip.compress(raw, mtime=0) if compressed else raw
    (tmp_path / name).write_bytes(data)
    cfg = load_config(make_config({"run": {"stages": ["curate"]}, "wandb": {"mode": "disabled"},
                                   "curate": {"inputs": [{"path": name}]}}))
    ctx = StageContext(cfg=cfg, stage="curate")
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    [unit] = stage.units(ctx)
    stats = stage.process_unit(ctx, 0, unit)
    assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] + sum(stats["dropped"].values())
    source = stats["per_source"]
    assert sum(s["docs_in"] for s in source.values()) == stats["docs_in"]
