"""tools/gpu_check_megatron.py on CPU: its arguments, the runs it plans with and without Transformer Engine,
the configs it would train (validated for real), its ratios, and its clear stop without CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools import gpu_check_megatron as tool  # noqa: E402


def test_arguments():
    args = tool.parse_args([])
    assert args.modes == ["bf16", "fp8"] and args.backends == ["native", "megatron"] and args.steps == 100
    args = tool.parse_args(["--modes", "bf16", "--backends", "megatron", "--steps", "10", "--megatron-spec", "local"])
    assert (args.modes, args.backends, args.steps, args.megatron_spec) == (["bf16"], ["megatron"], 10, "local")
    for bad in (["--modes", "fp16"], ["--backends", "nemo"], ["--steps", "2"], ["--megatron-spec", "x"],
                ["--modes", ""]):
        with pytest.raises(SystemExit):
            tool.parse_args(bad)


def test_plan_with_and_without_transformer_engine():
    args = tool.parse_args([])
    runs, notes, spec = tool.plan(args, have_te=True, fp8_capable=True)
    assert spec == "te" and notes == []
    assert runs == [("native", "bf16"), ("megatron", "bf16"), ("native", "fp8"), ("megatron", "fp8")]
    runs, notes, spec = tool.plan(args, have_te=False, fp8_capable=True)
    assert spec == "local" and ("megatron", "fp8") not in runs and ("native", "fp8") in runs
    assert any("local spec" in n for n in notes) and any("FP8 needs" in n for n in notes)
    runs, notes, _ = tool.plan(args, have_te=True, fp8_capable=False)
    assert runs == [("native", "bf16"), ("megatron", "bf16")] and any("8.9" in n for n in notes)
    with pytest.raises(SystemExit, match="transformer_engine"):
        tool.plan(tool.parse_args(["--megatron-spec", "te"]), have_te=False, fp8_capable=True)


@pytest.mark.parametrize("backend, mode", [("native", "bf16"), ("native", "fp8"), ("megatron", "bf16"),
                                           ("megatron", "fp8")])
def test_run_configs_validate(tmp_path, backend, mode):
    from tools.gpu_check_pretrain import run_config

    args = tool.parse_args(["--megatron-fp8-recipe", "tensorwise"])
    section = tool.section(backend, mode, args, tmp_path / "data", "te")
    cfg = run_config(section, tmp_path, f"{backend}-{mode}")
    p = cfg.pretrain
    assert p.backend == backend and p.train.fp8 is (mode == "fp8") and p.train.precision == "bf16"
    assert p.model.dim == 2048 and p.model.n_layers == 16 and p.model.kv_heads == 8
    if backend == "megatron":
        assert not p.train.compile and p.megatron.spec == "te" and p.megatron.fp8_recipe == "tensorwise"
        from lmhpc.train.megatron.translate import transformer_config

        tc = transformer_config(p, 1)
        assert tc.hidden_size == 2048 and tc.num_query_groups == 8 and (tc.fp8 is not None) == (mode == "fp8")


def test_ratios():
    results = [{"backend": "native", "mode": "bf16", "tokens_per_s": 1000.0},
               {"backend": "megatron", "mode": "bf16", "tokens_per_s": 1100.0},
               {"backend": "native", "mode": "fp8", "tokens_per_s": 1300.0},
               {"backend": "megatron", "mode": "fp8", "error": "exit code 1"}]
    s = tool.summarize(results)
    assert s["ratio_megatron_vs_native"] == {"bf16": 1.1, "fp8": None}
    assert s["ratio_fp8_vs_bf16"] == {"native": 1.3, "megatron": None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the stop on a machine without CUDA")
def test_stops_without_cuda():
    out = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check_megatron.py"), "--steps", "5"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr
