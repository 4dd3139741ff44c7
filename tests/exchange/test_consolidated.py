"""Consolidated checkpoints: DCP step folders of every parallel layout become one safetensors file equal to the
model that was in memory; the folder loads in one process without torch.distributed and without pickle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmhpc.exchange import load_model, read_weights
from lmhpc.exchange.consolidated import ARGS, WEIGHTS, read_consolidated, write_consolidated
from lmhpc.exchange.dcp_reader import UnsafeCheckpointError, read_metadata
from lmhpc.exchange.pretrain_checkpoint import newest_step_folder
from lmhpc.train.checkpoint import COMPLETE_MARKER
from tests.exchange.conftest import tiny_weights, token_batch

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(layout: str, out: Path, world: int = 2) -> None:
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.exchange.dcp_worker", layout, str(out)], env=env,
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * world, "\n".join(o[-3000:] for o in outputs)


@pytest.mark.parametrize("layout", ["fsdp", pytest.param("tp", marks=pytest.mark.slow),
                                    pytest.param("pp", marks=pytest.mark.slow),
                                    pytest.param("ep", marks=pytest.mark.slow)])
def test_a_two_rank_checkpoint_consolidates_to_the_model_in_memory(tmp_path: Path, layout: str) -> None:
    from safetensors.torch import load_file

    run_ranks(layout, tmp_path)
    step = tmp_path / "checkpoints" / "step-1"
    assert (step / COMPLETE_MARKER).exists()
    weights = read_weights(step)  # this process has no process group
    assert not torch.distributed.is_initialized()
    write_consolidated(weights, tmp_path / "consolidated")

    expected = load_file(str(tmp_path / "in_memory.safetensors"))
    got = read_consolidated(tmp_path / "consolidated")
    assert sorted(got.state) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got.state[name], tensor), name
    assert got.args == weights.args and got.args.moe.num_experts == (4 if layout == "ep" else 0)


def test_consolidated_folder_round_trip_and_load_model(tmp_path: Path, sp_tokenizer: Path) -> None:
    model, weights = tiny_weights(sp_tokenizer, tie_embeddings=True)
    out = write_consolidated(weights, tmp_path / "model")
    assert {p.name for p in out.iterdir()} >= {WEIGHTS, ARGS, "tokenizer.model", "tokenizer.json", "source.json"}
    loaded = load_model(out)
    assert loaded.model.output.weight is loaded.model.tok_embeddings.weight  # tied, stored once
    assert not loaded.model.training and loaded.args == model.args
    x = token_batch(sp_tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("the quick brown fox")) == "the quick brown fox"

    half = load_model(out, dtype=torch.bfloat16)
    assert half.model.tok_embeddings.weight.dtype == torch.bfloat16
    assert half.model.rope_cos.dtype == torch.float32  # the rotary tables keep their precision

    with pytest.raises(FileExistsError):
        write_consolidated(weights, out)


def test_consolidated_folder_holds_no_pickle(tmp_path: Path, sp_tokenizer: Path) -> None:
    _, weights = tiny_weights(sp_tokenizer)
    out = write_consolidated(weights, tmp_path / "model")
    for path in out.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"


def test_dcp_metadata_that_names_other_code_is_refused(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    step = tmp_path / "step-1"
    step.mkdir()
    (step / ".metadata").write_bytes(pickle.dumps(Evil()))
    (step / COMPLETE_MARKER).write_text("{}")
    (step / "train_state.json").write_text('{"model_args": {}}')
    with pytest.raises(UnsafeCheckpointError, match="system"):
        read_metadata(step)
    with pytest.raises(UnsafeCheckpointError):
        read_weights(step)
    assert not (tmp_path / "owned").exists()


def test_stage_folder_means_its_newest_complete_step(tmp_path: Path) -> None:
    folder = tmp_path / "pretrain" / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        (folder / f"step-{step}").mkdir(parents=True)
        if complete:
            (folder / f"step-{step}" / COMPLETE_MARKER).write_text("{}")
    assert newest_step_folder(tmp_path / "pretrain") == folder / "step-4"
    assert newest_step_folder(folder) == folder / "step-4"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        newest_step_folder(tmp_path / "elsewhere")
