"""``lmhpc export`` and ``lmhpc import``: a model goes consolidated → Hugging Face / GGUF → consolidated again
with the same logits; what a format cannot hold fails with the reason and exit code 2."""

from __future__ import annotations

from pathlib import Path

import torch

from lmhpc.cli import main
from lmhpc.exchange import load_model
from lmhpc.exchange.consolidated import write_consolidated
from tests.exchange.conftest import tiny_weights, token_batch


def test_export_and_import_round_trip(tmp_path: Path, sp_tokenizer: Path, capsys) -> None:
    model, weights = tiny_weights(sp_tokenizer, tie_embeddings=True)
    source = write_consolidated(weights, tmp_path / "model")
    assert main(["export", str(source), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(source), "--format", "gguf", "--gguf-type", "f32", "--out", str(tmp_path / "gguf")]) == 0
    assert (tmp_path / "gguf" / "model-f32.gguf").is_file()
    assert "wrote" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "gguf" / "model-f32.gguf"), "--out", str(tmp_path / "from-gguf")]) == 0
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "from-hf")]) == 0
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        expected = model(x)
        for folder in ("from-gguf", "from-hf"):
            loaded = load_model(tmp_path / folder)
            assert (loaded.model(x) - expected).abs().max().item() <= 1e-5, folder
            assert loaded.tokenizer.encode("the quick brown fox") == load_model(source).tokenizer.encode(
                "the quick brown fox")

    assert main(["export", str(source), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export", str(source), "--format", "hf", "--out", str(tmp_path / "hf"), "--overwrite"]) == 0


def test_what_a_format_cannot_hold_exits_2_with_the_reason(tmp_path: Path, sp_tokenizer: Path, capsys) -> None:
    _, weights = tiny_weights(sp_tokenizer, layer_pattern="AM")
    source = write_consolidated(weights, tmp_path / "hybrid")
    assert main(["export", str(source), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) == 2
    assert "Mamba" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
    assert main(["import", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err
