"""The local executor: every stage as subprocesses on this machine, in order.

Array stages run their tasks as concurrent processes, then one finalize process; MPI stages run
under ``mpiexec -n N``; torch stages as N processes with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and a
rendezvous on 127.0.0.1 (what torchrun sets, without torchrun's exit-code rewriting, so a rank that
saved on preemption still reports the requeue code). A task that exits with
the requeue code (it saved its state on a preemption signal) is started again, as SLURM would.
A failing stage stops the chain: its dependants are not run.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, BinaryIO, TextIO

from lmhpc.config import RunConfig
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.launch.state import PipelineState
from lmhpc.stages import STAGES

log = logging.getLogger("lmhpc.local")

LOGS_DIR = "logs"


def _copy_output(stream: IO[bytes], to: TextIO, log: BinaryIO | None, lock: threading.Lock) -> None:
    """Copy a process's output stream line by line to ``to`` (this process's stdout or stderr) and the log."""
    out = getattr(to, "buffer", None)
    try:
        for line in iter(stream.readline, b""):
            if out is not None:
                out.write(line)
                out.flush()
            else:
                to.write(line.decode("utf-8", "replace"))
            if log is not None:
                with lock:
                    log.write(line)
                    log.flush()
    finally:
        stream.close()


def venv_tool(name: str) -> str:
    """An executable next to the running interpreter (the venv's mpiexec), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def stage_command(cfg: RunConfig, stage: str, config_path: str, overrides: list[str]) -> list[str]:
    """The command that runs one stage in this process tree (before any per-task arguments)."""
    spec = STAGES[stage]
    res = cfg.resources_for(stage)
    python = cfg.executor.python or sys.executable
    base = ["-m", "lmhpc", "stage", stage, config_path, *overrides]
    if spec.kind == "mpi":
        return [venv_tool("mpiexec"), "-n", str(res.tasks), python, *base]
    return [python, *base]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torch_rank_envs(n: int) -> list[dict[str, str]]:
    """The environment of each of n local torch.distributed processes."""
    port = str(free_port())
    return [{"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port} for r in range(n)]


class LocalExecutor:
    """Runs the chain here, one stage after another, honouring completion markers."""

    def __init__(self, cfg: RunConfig, config_path: str, overrides: list[str]) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides
        self.state = PipelineState(cfg.run_dir)

    def _env(self, attempt: int) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cfg.executor.env)
        env["LMHPC_EXECUTOR"] = "local"
        env["LMHPC_ATTEMPT"] = str(attempt)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _run_with_requeue(self, cmd: list[str], stage: str, label: str, ranks: int = 1) -> int:
        """Run one job (``ranks`` torch processes, or one process) until it is not preempted."""
        res = self.cfg.resources_for(stage)
        name = f"{stage}.finalize" if label.endswith("finalize") else stage
        for attempt in range(res.max_requeues + 1):
            if ranks > 1:
                logs = [self._log_path(stage, f"{stage}.rank-{r}") for r in range(ranks)]
                codes = self._spawn([cmd] * ranks, attempt, torch_rank_envs(ranks), logs)
                rc = next((c for c in codes if c not in (0, REQUEUE_EXIT_CODE)), max(codes))
            else:
                rc = self._spawn([cmd], attempt, None, [self._log_path(stage, name)])[0]
            if rc != REQUEUE_EXIT_CODE:
                return rc
            log.warning("%s was preempted; starting it again (attempt %d)", label, attempt + 2)
        return rc

    def _log_path(self, stage: str, name: str) -> Path:
        """Where a local process of a stage logs: ``<run>/<stage>/logs/<name>.log`` (appended per attempt)."""
        return self.cfg.run_dir / stage / LOGS_DIR / f"{name}.log"

    def _spawn(self, cmds: list[list[str]], attempt: int, envs: list[dict[str, str]] | None = None,
               logs: list[Path] | None = None) -> list[int]:
        """Start the processes, copy each one's output to the terminal and to its log file, wait for all."""
        envs = envs or [{}] * len(cmds)
        procs, copiers, files = [], [], []
        for i, (c, e) in enumerate(zip(cmds, envs)):
            log = None
            if logs:
                logs[i].parent.mkdir(parents=True, exist_ok=True)
                log = open(logs[i], "ab")  # noqa: SIM115 - closed once the copiers are done
                files.append(log)
            p = subprocess.Popen(c, env={**self._env(attempt), **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(p)
            lock = threading.Lock()
            for stream, to in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
                t = threading.Thread(target=_copy_output, args=(stream, to, log, lock), daemon=True)
                t.start()
                copiers.append(t)
        try:
            codes = [p.wait() for p in procs]
        except KeyboardInterrupt:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait()
            raise
        finally:
            for t in copiers:
                t.join(timeout=10)
            for fh in files:
                fh.close()
        return codes

    def run_stage(self, stage: str) -> int:
        spec = STAGES[stage]
        res = self.cfg.resources_for(stage)
        cmd = stage_command(self.cfg, stage, self.config_path, self.overrides)
        if spec.kind == "torch":
            return self._run_with_requeue(cmd, stage, f"stage {stage}", ranks=res.tasks * res.nodes)
        if spec.kind != "array":
            return self._run_with_requeue(cmd, stage, f"stage {stage}")
        n = res.tasks
        pending = list(range(n))
        for attempt in range(res.max_requeues + 1):
            cmds = [cmd + ["--task", str(t), "--num-tasks", str(n)] for t in pending]
            codes = self._spawn(cmds, attempt, None, [self._log_path(stage, f"{stage}.task-{t}") for t in pending])
            failed = [t for t, rc in zip(pending, codes) if rc not in (0, REQUEUE_EXIT_CODE)]
            if failed:
                log.error("stage %s: task(s) %s failed", stage, failed)
                return 1
            pending = [t for t, rc in zip(pending, codes) if rc == REQUEUE_EXIT_CODE]
            if not pending:
                break
            log.warning("stage %s: task(s) %s preempted; starting them again", stage, pending)
        if pending:
            return REQUEUE_EXIT_CODE
        return self._run_with_requeue(cmd + ["--finalize"], stage, f"stage {stage} finalize")

    def run(self, stages: list[str]) -> int:
        self.state.record_submission("local", stages, launcher_pid=os.getpid(), launcher_host=socket.gethostname())
        for stage in stages:
            if (self.cfg.run_dir / stage / "DONE").exists():
                print(f"[lmhpc] {stage}: already complete, skipped")
                self.state.update(stage, state="done")
                continue
            print(f"[lmhpc] {stage}: running ({STAGES[stage].kind}, {self.cfg.resources_for(stage).tasks} task(s))")
            self.state.update(stage, state="running", pid=os.getpid(), started=time.time())
            t0 = time.time()
            rc = self.run_stage(stage)
            if rc != 0:
                self.state.update(stage, state="failed", returncode=rc, ended=time.time())
                later = stages[stages.index(stage) + 1 :]
                for s in later:
                    self.state.update(s, state="cancelled", reason=f"dependency {stage} failed")
                print(f"[lmhpc] {stage}: FAILED (exit {rc}); not running {later or 'anything else'}")
                return rc
            self.state.update(stage, state="done", ended=time.time())
            print(f"[lmhpc] {stage}: done in {time.time() - t0:.1f}s -> {self.cfg.run_dir / stage}")
        return 0
