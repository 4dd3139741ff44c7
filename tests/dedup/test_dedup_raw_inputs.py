"""dedup.inputs: near-duplicate removal of a raw collection without a curate pass."""

from __future__ import annotations

import json
from pathlib import Path

from lmhpc.config import load_config
from lmhpc.runner import run_stage
from tests.dedup.corpus import dedup_config, kept_ids, output_tree, run_dedup_mpi, write_curated


def write_raw(folder: Path, docs, files: int = 3, bad_line: bool = True) -> None:
    """The documents as plain JSON-lines files (with one broken line in the first when ``bad_line``)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(docs) // files)
    for i in range(files):
        lines = [json.dumps(d.to_dict()) for d in docs[i * per : (i + 1) * per]]
        if bad_line and i == 0:
            lines.insert(2, "{broken json")
        (folder / f"raw-{i}.jsonl").write_text("\n".join(lines) + "\n")


def test_raw_inputs_give_what_curated_shards_give(tmp_path, planted):
    raw = tmp_path / "raw"
    write_raw(raw, planted.docs, files=3)
    runs = tmp_path / "runs"
    cfg = load_config(dedup_config(tmp_path / "raw.yaml", runs, name="raw",
                                   inputs=[{"path": str(raw / "*.jsonl"), "source": "web"}]))
    assert run_stage(cfg, "dedup") == 0  # no curate stage in the run, none needed
    stage = runs / "raw" / "dedup"
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["docs_in"] == len(planted.docs) + 1 and stats["quarantined"] == 1
    assert stats["quarantine_reasons"] == {"invalid_json": 1}
    assert stats["raw_input_files"] == 3
    assert not (stage / "_ingest").exists()
    # the same documents as three curated shards: the same kept set
    write_curated(runs / "cur", planted.docs, shards=3)
    assert run_stage(load_config(dedup_config(tmp_path / "cur.yaml", runs, name="cur")), "dedup") == 0
    assert kept_ids(stage) == kept_ids(runs / "cur" / "dedup")


def test_raw_inputs_on_two_ranks_match_one(tmp_path, planted):
    raw = tmp_path / "raw"
    write_raw(raw, planted.docs[:120], files=4, bad_line=False)
    trees = []
    for ranks in (1, 2):
        runs = tmp_path / f"runs{ranks}"
        cfg = dedup_config(tmp_path / f"c{ranks}.yaml", runs, inputs=[{"path": str(raw / "*.jsonl")}])
        out = run_dedup_mpi(cfg, ranks)
        assert out.returncode == 0, out.stderr[-3000:]
        trees.append(output_tree(runs / "t" / "dedup"))
    assert trees[0] == trees[1] and trees[0]
