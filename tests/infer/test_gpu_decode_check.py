"""The GPU decode check's CPU parts: argument handling, the plan of configurations, the table, and a clear stop
without CUDA (the GPU measurements themselves need a GPU machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu_decode_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_decode_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_cover_eager_compiled_cudagraphs_bf16_int8_batch_1_and_8(tool):
    args = tool.parse_args([])
    assert args.dtypes == ["bf16", "int8"] and args.batches == [1, 8]
    configs = tool.plan(args)
    assert len(configs) == 12 and not any(c["reference"] for c in configs)
    assert [c["mode"] for c in configs[:3]] == ["eager", "compiled", "cudagraphs"]


def test_eager_runs_as_a_reference_when_not_asked_for(tool):
    configs = tool.plan(tool.parse_args(["--modes", "cudagraphs", "--dtypes", "int8", "--batches", "8"]))
    assert [(c["mode"], c["reference"]) for c in configs] == [("eager", True), ("cudagraphs", False)]


@pytest.mark.parametrize("argv", [["--modes", "eager,graphs"], ["--dtypes", "fp8"], ["--batches", "0"],
                                  ["--batches", "one"], ["--new-tokens", "0"], ["--modes", ""]])
def test_bad_arguments_exit_with_a_message(tool, argv, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(argv)
    assert e.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_render_gives_ratios_and_equal_tokens(tool):
    rows = [{"dtype": "bf16", "batch": 1, "mode": "eager", "tokens_per_s": 100.0, "ratio_vs_eager": 1.0,
             "equal_token_fraction": 1.0},
            {"dtype": "bf16", "batch": 1, "mode": "cudagraphs", "tokens_per_s": 412.5, "ratio_vs_eager": 4.125,
             "equal_token_fraction": 0.984}]
    lines = tool.render(rows).splitlines()
    assert len(lines) == 3 and "tokens/s" in lines[0]
    assert "412.5" in lines[2] and "4.12x" in lines[2] and "98.4%" in lines[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_stops_with_a_clear_message(tool, capsys):
    assert tool.main(["--batches", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
