"""``lmhpc generate MODEL --prompt ...`` on a consolidated model folder."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmhpc.cli import main
from lmhpc.exchange.consolidated import write_consolidated
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.infer.generate import Generator
from tests.infer.models import build, tiny_args

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model_folder(tmp_path, sp_tokenizer) -> Path:
    model = build(tiny_args(n_kv_heads=2), seed=1)
    weights = ModelWeights(model_state(model), model.args, read_tokenizer_files(sp_tokenizer.path.parent))
    return write_consolidated(weights, tmp_path / "model")


def expected(sp_tokenizer, prompts, **kw):
    return Generator(build(tiny_args(n_kv_heads=2), seed=1), sp_tokenizer).generate(prompts, **kw)


def test_generate_prints_the_completion(model_folder, sp_tokenizer, capsys):
    assert main(["generate", str(model_folder), "--prompt", "the quick brown", "--max-new-tokens", "8"]) == 0
    [c] = expected(sp_tokenizer, ["the quick brown"], max_new_tokens=8)
    assert capsys.readouterr().out == c.text + "\n"


def test_generate_json_batch_chat_and_sampling(model_folder, sp_tokenizer, capsys):
    argv = ["generate", str(model_folder), "--prompt", "hi", "--prompt", "seven tired", "--chat", "--json",
            "--max-new-tokens", "6", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "4",
            "--stop", "zzz"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = expected(sp_tokenizer, ["hi", "seven tired"], max_new_tokens=6, temperature=0.9, top_k=20, top_p=0.9,
                    seed=4, chat=True, stop=["zzz"], logprobs=True)
    assert [r["token_ids"] for r in rows] == [c.token_ids for c in want]
    assert [r["text"] for r in rows] == [c.text for c in want]
    assert [r["finish_reason"] for r in rows] == [c.finish_reason for c in want]
    assert all(len(r["logprobs"]) == len(r["token_ids"]) for r in rows)


def test_prompt_from_stdin(model_folder, sp_tokenizer, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("cold grey seas"))
    assert main(["generate", str(model_folder), "--max-new-tokens", "5"]) == 0
    [c] = expected(sp_tokenizer, ["cold grey seas"], max_new_tokens=5)
    assert capsys.readouterr().out == c.text + "\n"


def test_bad_model_or_request_exits_2(model_folder, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "a"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(model_folder), "--prompt", "a", "--max-new-tokens", "100"]) == 2
    assert "max_seq_len" in capsys.readouterr().err


def test_lmhpc_command_runs_generate(model_folder, sp_tokenizer):
    out = subprocess.run([sys.executable, "-m", "lmhpc", "generate", str(model_folder), "--prompt", "a lazy",
                          "--max-new-tokens", "4"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    [c] = expected(sp_tokenizer, ["a lazy"], max_new_tokens=4)
    assert out.stdout == c.text + "\n"
