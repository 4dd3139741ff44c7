"""``lmhpc evaluate MODEL``: scores of a model folder outside a run."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.evaluate.conftest import tiny_model


def test_evaluate_command_scores_a_model_folder(tmp_path, tokenizer_dir, repo_root):
    from lmhpc.exchange.consolidated import write_consolidated
    from lmhpc.exchange.tokenizer import load_tokenizer
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    vocab = load_tokenizer(tokenizer_dir).vocab_size
    model = tiny_model(vocab_size=vocab, max_seq_len=256)
    folder = write_consolidated(ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer_dir)),
                                tmp_path / "model")
    text = tmp_path / "held.txt"
    text.write_text("seven tired wizards quietly brew strong coffee near old stone bridges\n")
    out = subprocess.run([sys.executable, "-m", "lmhpc", "evaluate", str(folder), "--tasks", "arc_easy,piqa",
                          "--limit", "5", "--text", str(text), "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| model | held.txt bpb |" in out.stdout and "arc_easy acc_norm" in out.stdout
    results = json.loads((tmp_path / "r.json").read_text())
    (row,) = results["models"]
    assert row["tasks"]["piqa"]["items"] == 5 and row["perplexity"]["held.txt"]["docs"] == 1
    assert results["licenses"] == {"arc_easy": "CC BY-SA 4.0", "piqa": "AFL-3.0"}
    bad = subprocess.run([sys.executable, "-m", "lmhpc", "evaluate", str(folder), "--tasks", "nope"],
                         capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert bad.returncode == 2 and "unknown task" in bad.stderr
