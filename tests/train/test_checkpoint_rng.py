"""The per-rank RNG files of a checkpoint: loaded weights-only (a crafted pickle is refused, never run),
and a resume restores the generator bit for bit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from lmhpc.train import checkpoint as ckpt_mod
from lmhpc.train.checkpoint import CheckpointManager, latest_step


def _manager(folder: Path) -> CheckpointManager:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return CheckpointManager(folder, [model], [opt], keep_last=2)


def test_resume_loads_rng_weights_only_and_restores_it_bitwise(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "checkpoints"
    manager = _manager(folder)
    torch.manual_seed(1234)
    manager.save(1, {"step": 1, "data_step": 1})
    expected = torch.rand(8)  # what the run draws next after the save

    rng_loads: list[dict] = []
    real_load = torch.load

    def recording_load(f, *args, **kwargs):
        if "rng-rank" in str(f):
            rng_loads.append(kwargs)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    torch.manual_seed(999)  # a fresh process: another generator state
    resumed = _manager(folder)
    step = latest_step(folder)
    assert step == 1
    assert resumed.load(step) == {"step": 1, "data_step": 1}
    assert rng_loads == [{"weights_only": True}]
    assert torch.equal(torch.rand(8), expected)


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker: what a malicious RNG file could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_rng_file_is_refused_not_run(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    manager = _manager(folder)
    path = manager.save(1, {"step": 1, "data_step": 1})
    marker = tmp_path / "code-ran"
    torch.save({"torch": _RunsCode(marker), "cuda": None}, path / "rng-rank00000.pt")

    with pytest.raises(pickle.UnpicklingError):
        _manager(folder).load(1)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        ckpt_mod.restore_rng_state(path / "rng-rank00000.pt")
    assert not marker.exists()
