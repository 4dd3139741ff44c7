"""Real MPI ranks (mpi4py + the mpich wheel) under mpiexec: identity and agreement on preemption."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmhpc.launch.local import venv_tool

SCRIPT = r"""
import os, sys
from lmhpc.runner import _distributed_identity
from lmhpc.context import StageContext
from lmhpc.launch.preempt import PreemptionFlag
from lmhpc.config import RunConfig
rank, world, local, comm = _distributed_identity("mpi")
flag = PreemptionFlag()
ctx = StageContext(cfg=RunConfig(), stage="dedup", rank=rank, world_size=world, comm=comm, flag=flag)
before = ctx.agree_stop()
if rank == world - 1:
    flag.set("test")          # only the last rank got the signal
after = ctx.agree_stop()
print(f"rank={rank} world={world} before={before} after={after}", flush=True)
"""


@pytest.mark.mpi
def test_mpiexec_two_ranks_agree_on_stop(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    out = subprocess.run([venv_tool("mpiexec"), "-n", "2", sys.executable, str(script)], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert rank_lines(out.stdout) == ["rank=0 world=2 before=False after=True",
                                      "rank=1 world=2 before=False after=True"]


def rank_lines(output: str) -> list[str]:
    """The ranks' report lines; the launcher may interleave the ranks' output streams."""
    return sorted(re.findall(r"rank=\d+ world=\d+ before=\w+ after=(?:True|False)", output))
