"""Record exchanges between MPI ranks (mpi4py), metered in bytes.

Records are numpy structured arrays sent as raw bytes with ``Alltoallv``. An exchange larger than
``max_bytes`` on any rank goes in several rounds, so no message exceeds MPI's int32 counts and the
receive buffers stay bounded. Received records arrive grouped by source rank; callers sort them
by content, so nothing downstream depends on the number of ranks.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from typing import Any

import numpy as np
from mpi4py import MPI


class Exchanger:
    """Alltoallv/gather of structured numpy records over ``comm``, counting the bytes this rank sends."""

    def __init__(self, comm: Any, max_bytes: int = 256 * 2**20) -> None:
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.max_bytes = max(int(max_bytes), 1)
        self.bytes_sent: dict[str, int] = defaultdict(int)  # per phase name, to other ranks only

    def alltoallv(self, records: np.ndarray, dest: np.ndarray, phase: str) -> np.ndarray:
        """Send ``records[i]`` to rank ``dest[i]``; return what every rank sent here, by source rank."""
        dtype = records.dtype
        order = np.argsort(dest, kind="stable")
        ordered = np.ascontiguousarray(records[order])
        counts = np.bincount(dest, minlength=self.size).astype(np.int64) if len(dest) else np.zeros(self.size, np.int64)
        recv_counts = np.empty(self.size, dtype=np.int64)
        self.comm.Alltoall(counts, recv_counts)
        self.bytes_sent[phase] += int((counts.sum() - counts[self.rank]) * dtype.itemsize)
        # rounds: every rank must take part in the same number of Alltoallv calls
        local_peak = max(int(counts.sum()), int(recv_counts.sum())) * dtype.itemsize
        rounds = max(1, -(-self.comm.allreduce(local_peak, op=MPI.MAX) // self.max_bytes))
        send_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        parts: list[np.ndarray] = []
        for k in range(rounds):
            lo_s, hi_s = (counts * k) // rounds, (counts * (k + 1)) // rounds
            lo_r, hi_r = (recv_counts * k) // rounds, (recv_counts * (k + 1)) // rounds
            send_n, recv_n = hi_s - lo_s, hi_r - lo_r
            sendbuf = (np.concatenate([ordered[send_starts[d] + lo_s[d] : send_starts[d] + hi_s[d]]
                                       for d in range(self.size)]) if len(ordered) else ordered)
            recvbuf = np.empty(int(recv_n.sum()), dtype=dtype)
            item = dtype.itemsize
            s_disp = np.concatenate(([0], np.cumsum(send_n)[:-1])) * item
            r_disp = np.concatenate(([0], np.cumsum(recv_n)[:-1])) * item
            self.comm.Alltoallv(
                [_as_bytes(sendbuf), (send_n * item).tolist(), s_disp.tolist(), MPI.BYTE],
                [_as_bytes(recvbuf), (recv_n * item).tolist(), r_disp.tolist(), MPI.BYTE],
            )
            parts.append(recvbuf)
        if rounds == 1:
            return parts[0]
        # reassemble by source rank: round k holds slice k of every source's records
        by_source: list[list[np.ndarray]] = [[] for _ in range(self.size)]
        for k, buf in enumerate(parts):
            lo_r, hi_r = (recv_counts * k) // rounds, (recv_counts * (k + 1)) // rounds
            starts = np.concatenate(([0], np.cumsum(hi_r - lo_r)[:-1]))
            for s in range(self.size):
                by_source[s].append(buf[starts[s] : starts[s] + hi_r[s] - lo_r[s]])
        return np.concatenate([a for chunks in by_source for a in chunks])

    def gather(self, records: np.ndarray, phase: str, root: int = 0) -> np.ndarray | None:
        """Every rank's records concatenated in rank order on ``root`` (None elsewhere)."""
        dest = np.full(len(records), root, dtype=np.int64)
        received = self.alltoallv(records, dest, phase)
        return received if self.rank == root else None

    def scatter(self, records: np.ndarray | None, dest: np.ndarray | None, phase: str, root: int = 0) -> np.ndarray:
        """From ``root``, send ``records[i]`` to rank ``dest[i]``; other ranks pass None."""
        if self.rank != root:
            dtype = self.comm.bcast(None, root=root)
            records, dest = np.zeros(0, dtype=dtype), np.zeros(0, dtype=np.int64)
        else:
            assert records is not None and dest is not None
            self.comm.bcast(records.dtype, root=root)
        return self.alltoallv(records, dest, phase)

    def exchange_objects(self, outgoing: list[list[Any]], phase: str) -> list[list[Any]]:
        """Pickled ``alltoall`` of Python lists (one per destination); for small, irregular payloads."""
        incoming = self.comm.alltoall(outgoing)
        self.bytes_sent[phase] += sum(len(pickle.dumps(x)) for d, x in enumerate(outgoing) if d != self.rank)
        return incoming


def _as_bytes(array: np.ndarray) -> np.ndarray:
    return array.view(np.uint8) if array.size else np.zeros(0, dtype=np.uint8)
