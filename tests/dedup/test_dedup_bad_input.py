"""Empty, one-word, punctuation-only, huge and malformed documents: handled, and each one counted."""

from __future__ import annotations

import json
import random

import pytest
import zstandard

from lmhpc.config import load_config
from lmhpc.data.quarantine import read_quarantine
from lmhpc.runner import run_stage
from tests.dedup.corpus import dedup_config, dropped_records, kept_ids, run_dedup_mpi, write_curated


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(n)]


def write_raw_shard(path, records: list[dict]) -> None:
    """A curate-format shard written byte by byte, so it can hold records our writer would refuse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records).encode()
    path.write_bytes(zstandard.ZstdCompressor().compress(lines))


def test_bad_and_extreme_documents_are_counted(tmp_path):
    runs = tmp_path / "runs"
    huge = words(200_000, 1)  # ~1.2 MB of text, 200k shingles, signed in pieces
    huge_variant = list(huge)
    for i in range(0, len(huge_variant), 500):
        huge_variant[i] = "changed"
    normal = [" ".join(words(200, s)) for s in range(4)]
    shard0 = [
        {"id": "empty", "text": ""},
        {"id": "blank", "text": "  \n\t "},
        {"id": "one-word", "text": "hello"},
        {"id": "one-word-again", "text": "Hello"},  # exact duplicate once lower-cased
        {"id": "punctuation", "text": "!!! ??? ..."},  # no words left for MinHash: exact dedup only
        {"id": "null-text", "text": None},
        {"id": "number-text", "text": 42},
        {"id": 7, "text": "an id that is a number"},
        {"id": "surrogate", "text": "broken \ud800 text"},
        {"id": "n0", "text": normal[0]},
        {"id": "n1", "text": normal[1]},
    ]
    shard1 = [
        {"id": "huge", "text": " ".join(huge)},
        {"id": "huge-variant", "text": " ".join(huge_variant)},
        {"id": "n2", "text": normal[2]},
        {"id": "n3", "text": normal[3]},
        {"id": "n0-copy", "text": normal[0] + " "},
    ]
    data = runs / "t" / "curate" / "data"
    write_raw_shard(data / "part-00000-00000.jsonl.zst", shard0)
    write_raw_shard(data / "part-00001-00000.jsonl.zst", shard1)
    (runs / "t" / "curate" / "DONE").write_text("{}")
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs, minhash={"max_shingles_per_update": 30_000}))

    assert run_stage(cfg, "dedup") == 0

    stage = runs / "t" / "dedup"
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == len(shard0) + len(shard1)
    assert stats["dropped"] == {"empty": 2, "exact": 2, "near": 1}
    assert stats["quarantined"] == 4
    assert stats["quarantine_reasons"] == {"text_not_string": 2, "id_not_string": 1, "text_not_utf8": 1}
    assert stats["kept_without_minhash"] == 2  # "hello" and the punctuation-only document
    assert set(kept_ids(stage)) == {"one-word", "punctuation", "n0", "n1", "huge", "n2", "n3"}
    reasons = {r["id"]: (r["reason"], r.get("kept_id")) for r in dropped_records(stage)}
    assert reasons == {"empty": ("empty", None), "blank": ("empty", None), "one-word-again": ("exact", "one-word"),
                       "n0-copy": ("exact", "n0"), "huge-variant": ("near", "huge")}
    bad = list(read_quarantine(stage / "quarantine" / "00000.jsonl"))
    assert [b["location"] for b in bad] == [f"part-00000-00000.jsonl.zst:{n}" for n in (6, 7, 8, 9)]
    assert all(b["detail"] for b in bad)


def test_damaged_shard_fails_with_its_name(tmp_path):
    runs = tmp_path / "runs"
    data = runs / "t" / "curate" / "data"
    data.mkdir(parents=True)
    good = zstandard.ZstdCompressor().compress(b'{"id": "a", "text": "fine text here"}\n' * 50)
    (data / "part-00000-00000.jsonl.zst").write_bytes(good[: len(good) // 2])  # truncated
    (runs / "t" / "curate" / "DONE").write_text("{}")
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs))
    assert run_stage(cfg, "dedup") == 1
    assert not (runs / "t" / "dedup" / "DONE").exists()


def test_no_input_shards_gives_an_empty_complete_stage(tmp_path):
    runs = tmp_path / "runs"
    (runs / "t" / "curate" / "data").mkdir(parents=True)
    (runs / "t" / "curate" / "DONE").write_text("{}")
    cfg = load_config(dedup_config(tmp_path / "c.yaml", runs))
    assert run_stage(cfg, "dedup") == 0
    stats = json.loads((runs / "t" / "dedup" / "stats.json").read_text())
    assert (stats["docs_in"], stats["docs_out"], stats["shards_in"]) == (0, 0, 0)


@pytest.mark.mpi
def test_damaged_shard_on_one_rank_ends_every_rank(tmp_path, planted):
    """The rank that meets the damage tells the others at the next round: the job ends, it does not hang."""
    runs = tmp_path / "runs"
    write_curated(runs / "t", planted.docs[:200], shards=4)
    damaged = sorted((runs / "t" / "curate" / "data").glob("part-00003-*"))[0]
    damaged.write_bytes(damaged.read_bytes()[:200])  # truncated: only rank 1 reads shard 3
    res = run_dedup_mpi(dedup_config(tmp_path / "c.yaml", runs), 2, timeout=120)
    assert res.returncode != 0
    assert "rank 1:" in res.stderr and damaged.name in res.stderr
    assert not (runs / "t" / "dedup" / "DONE").exists()
