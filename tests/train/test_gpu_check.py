"""The GPU check script's CPU parts: its ~1B configs validate, and without CUDA it stops clearly."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest
import torch

from lmhpc.model.transformer import ModelArgs, Transformer, count_params, flops_per_token

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu_check_pretrain.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("gpu_check_pretrain", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mode", ["bf16", "fp8"])
def test_configs_validate_and_the_model_is_about_1b(tool, tmp_path, mode):
    section = tool.pretrain_section(mode, tmp_path / "data", steps=10, seq_len=2048, batch=4, compile_model=True,
                                    activation_checkpointing=False)
    cfg = tool.run_config(section, tmp_path, f"check-{mode}")
    assert cfg.pretrain.train.fp8 is (mode == "fp8")
    args: ModelArgs = dataclasses.replace(cfg.pretrain.model)
    with torch.device("meta"):
        n = count_params(Transformer(args))
    assert 0.8e9 < n < 1.1e9
    assert 5e9 < flops_per_token(args, 2048) < 8e9


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_it_stops_with_a_clear_message(tool, capsys):
    assert tool.main(["--steps", "1"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("impl", ["dtensor", "allgather_kv"])
def test_context_parallel_configs_validate_for_ranks_sharing_a_gpu(tool, tmp_path, impl):
    section = tool.cp_section(tmp_path / "data", 2, impl, "bf16", steps=5, rotate="alltoall")
    cfg = tool.run_config(section, tmp_path, f"cp-{impl}", tasks=2, gpus=0)
    assert cfg.pretrain.parallel.resolved(2).cp == 2
    assert cfg.pretrain.parallel.cp_impl == impl and cfg.pretrain.parallel.cp_rotate == "alltoall"


@pytest.mark.parametrize("ep", [1, 2])
def test_expert_parallel_configs_validate(tool, tmp_path, ep):
    cfg = tool.run_config(tool.ep_section(tmp_path / "data", ep, "bf16", steps=5), tmp_path, f"ep{ep}", tasks=2,
                          gpus=0)
    assert cfg.pretrain.parallel.resolved(2).dp_shard == 2 and cfg.pretrain.parallel.ep == ep
    assert cfg.pretrain.model.moe.num_experts == 8
