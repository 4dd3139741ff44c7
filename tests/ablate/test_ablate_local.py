"""A tiny ablation end to end with the local executor (two processes share the variants): every kind of variant,
the comparison, and a variant redone after its outputs were lost scores exactly as before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmhpc.runner import unit_marker
from tests.ablate.ablate_setup import VARIANTS, ablation_config, check_comparison, tokenizer_model
from tests.conftest import write_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _run(config: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(config), "--executor", "local"],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _scores(comparison: dict) -> dict:
    return {v["name"]: (v["final_loss"], v["tokens"], v["scores"]) for v in comparison["variants"]}


def test_ablation_runs_locally_and_a_lost_variant_is_redone_identically(tmp_path):
    model = tokenizer_model(tmp_path / "sp")
    config = write_config(tmp_path / "ablate.yaml", ablation_config(tmp_path, tokenizer=str(model)))
    _run(config)
    run_dir = tmp_path / "runs" / "ab"
    first = check_comparison(run_dir)
    stage = run_dir / "ablate"
    assert (stage / "logs" / "ablate.task-1.log").exists()  # the second process took its share
    stats = json.loads((stage / "stats.json").read_text())
    assert stats["units"] == len(VARIANTS) and set(stats["variants"]) == set(VARIANTS)
    # each variant's data was removed once scored (keep_data: false); its scores and probe stay
    folder = stage / "variants" / "without_dedup"
    assert not (folder / "curate" / "data").exists() and not list((folder / "tokenize").glob("*.bin"))
    assert (folder / "evaluate" / "result.json").is_file() and (folder / "probe" / "checkpoints").is_dir()

    # lose one variant (its folder and marker) and the stage's completion: only that variant is made again
    index = VARIANTS.index("without_dedup")
    shutil.rmtree(folder)
    unit_marker(stage, index).unlink()
    (stage / "DONE").unlink()
    markers = {i: unit_marker(stage, i).stat().st_mtime_ns for i in range(len(VARIANTS)) if i != index}
    _run(config)
    second = check_comparison(run_dir)
    assert _scores(second) == _scores(first)
    assert {i: unit_marker(stage, i).stat().st_mtime_ns for i in markers} == markers
