"""Alltoallv of structured records between real MPI ranks, in one round and in several."""

from __future__ import annotations

import pytest

from tests.dedup.corpus import REPO

SCRIPT = r"""
import json, sys
import numpy as np
from mpi4py import MPI
from lmhpc.dedup.exchange import Exchanger

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
rec = np.dtype([("key", "<u8"), ("src", "<u8")])
out = {}
for max_bytes in (1 << 30, 48):  # one round; then rounds of a few records
    ex = Exchanger(comm, max_bytes=max_bytes)
    n = 10 + 7 * rank
    r = np.empty(n, dtype=rec)
    r["key"] = np.arange(n) * 1000 + rank
    r["src"] = rank
    dest = (np.arange(n) + rank) % size
    got = ex.alltoallv(r, dest, "test")
    expected = sorted((int(k), s) for s in range(size) for i, k in enumerate(np.arange(10 + 7 * s) * 1000 + s)
                      if (i + s) % size == rank)
    out[str(max_bytes)] = {"ok": sorted((int(k), int(s)) for k, s in got) == expected,
                           "by_source": [int(s) for s in got["src"]] == sorted(int(s) for s in got["src"]),
                           "sent": ex.bytes_sent["test"]}
    gathered = ex.gather(r, "g")
    if rank == 0:
        out[str(max_bytes)]["gather"] = len(gathered) == sum(10 + 7 * s for s in range(size))
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as fh:
    json.dump({"rank": rank, **out}, fh)
"""


@pytest.mark.mpi
def test_alltoallv_in_one_and_several_rounds(tmp_path):
    import json
    import subprocess
    import sys

    from lmhpc.launch.local import venv_tool

    script = tmp_path / "ex.py"
    script.write_text(SCRIPT)
    cmd = [venv_tool("mpiexec"), "-n", "3", sys.executable, str(script), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    assert len(rows) == 3
    for row in rows:
        for rounds in ("1073741824", "48"):
            assert row[rounds]["ok"] and row[rounds]["by_source"], row
        assert row["1073741824"]["sent"] == row["48"]["sent"] > 0
    assert next(r for r in rows if r["rank"] == 0)["48"]["gather"]
