"""The SLURM executor: every stage a submitit job, chained with ``afterok`` dependencies.

- array stages: one SLURM array (``map_array``) over task indices, several when the stage has more
  tasks than the cluster's ``MaxArraySize``, then a finalize job that depends on all of them;
- mpi stages: one job of N tasks launched by ``srun --mpi=pmi2``;
- torch stages: one task per GPU (or per process on CPU) with submitit's
  ``TorchDistributedEnvironment``;
- every job: ``--requeue``, ``--kill-on-invalid-dep=yes`` (a failed stage cancels its dependants),
  ``--signal=USR2@<delay>`` and ``--open-mode=append`` (from submitit); its processes start in
  :mod:`lmhpc.launch.entry` (the preemption flag before any import), ``srun --kill-on-bad-exit=1`` ends
  the step when a rank dies, and :mod:`lmhpc.launch.crash` then requeues a job killed by a signal.

The job itself is :class:`StageJob`, a ``Checkpointable``: on requeue it runs again and the stage
resumes from what it saved. Submitted from inside a running job, the new jobs do not inherit that
job's ``SLURM_*``/``SBATCH_*`` variables.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable
from submitit.slurm.slurm import _make_sbatch_string

from lmhpc.config import RunConfig, load_config
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE, early_flag
from lmhpc.launch.state import PipelineState
from lmhpc.stages import STAGES

log = logging.getLogger("lmhpc.slurm")

DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's default MaxArraySize
KEPT_IN_JOBS = frozenset({"SLURM_CONF"})  # where the cluster is, not what the enclosing job was given


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (an array holds indices 0..MaxArraySize-1), from ``scontrol show
    config``; :data:`DEFAULT_MAX_ARRAY_SIZE` when scontrol cannot tell. Asked once per process."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return DEFAULT_MAX_ARRAY_SIZE
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.MULTILINE)
    return int(m.group(1)) if out.returncode == 0 and m else DEFAULT_MAX_ARRAY_SIZE


def array_chunks(tasks: int, limit: int) -> list[range]:
    """Task indices 0..tasks-1 cut into runs of at most ``limit``: one SLURM array each."""
    if limit < 1:
        raise ValueError(f"MaxArraySize={limit}: job arrays are disabled on this cluster")
    return [range(start, min(start + limit, tasks)) for start in range(0, tasks, limit)]


def submission_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment to submit jobs with. Inside a running job (``SLURM_JOB_ID`` set) every
    ``SLURM_*``/``SBATCH_*`` variable describes that job (its memory, tasks, array, time): passed on,
    they would override or contradict the new jobs' own options (e.g. an inherited
    ``SLURM_MEM_PER_CPU`` beside the new job's ``SLURM_MEM_PER_NODE`` makes srun refuse to start), so
    they are dropped, ``SLURM_CONF`` excepted."""
    if not environ.get("SLURM_JOB_ID"):
        return dict(environ)
    return {k: v for k, v in environ.items() if k in KEPT_IN_JOBS or not k.startswith(("SLURM_", "SBATCH_"))}


@contextmanager
def scrubbed_environ() -> Iterator[None]:
    """Within the block, ``os.environ`` is :func:`submission_env` of itself (submitit runs sbatch with
    the process environment); the variables come back afterwards."""
    keep = submission_env(os.environ)
    removed = {k: v for k, v in os.environ.items() if k not in keep}
    for k in removed:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(removed)


def array_part_name(name: str, chunk: range, chunks: int) -> str:
    """The dry run's name of one array of a stage: the job name, with its task range when split."""
    if chunks == 1:
        return name
    last = chunk.stop - 1
    return f"{name}[{chunk.start}]" if last == chunk.start else f"{name}[{chunk.start}-{last}]"


class StageJob(Checkpointable):
    """What every SLURM task runs: load the config, run (a part of) one stage in this process."""

    def __init__(self, stage: str, config_path: str, overrides: list[str], finalize: bool = False) -> None:
        self.stage = stage
        self.config_path = config_path
        self.overrides = list(overrides)
        self.finalize = finalize

    def __call__(self, task: int | None = None, num_tasks: int | None = None) -> int:
        # submitit has just put its own handlers in place: take the preemption signals back before the
        # heavy imports below (the flag keeps what arrived since the job's first line)
        early_flag().install()
        from lmhpc.runner import run_stage

        os.environ["LMHPC_EXECUTOR"] = "slurm"
        cfg = load_config(self.config_path, self.overrides, executor="slurm")
        if STAGES[self.stage].kind == "torch":
            res = cfg.resources_for(self.stage)
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=res.gpus_per_node > 0)
        code = run_stage(cfg, self.stage, task=task, num_tasks=num_tasks, finalize=self.finalize)
        if code == REQUEUE_EXIT_CODE:
            # the stage saved its state and rank 0 asked SLURM to requeue this job
            sys.exit(REQUEUE_EXIT_CODE)
        if code != 0:
            raise RuntimeError(f"stage {self.stage} failed with exit code {code}; see the job log")
        return code


def job_name(cfg: RunConfig, stage: str, finalize: bool = False) -> str:
    return f"{cfg.run.name}.{stage}" + (".finalize" if finalize else "")


def executor_parameters(cfg: RunConfig, stage: str, finalize: bool = False) -> dict[str, Any]:
    """submitit SlurmExecutor parameters of one stage's job (no ``slurm_`` prefix)."""
    spec = STAGES[stage]
    res = cfg.resources_for(stage)
    ex = cfg.executor
    single = finalize or spec.kind in ("array", "single")
    params: dict[str, Any] = {
        "job_name": job_name(cfg, stage, finalize),
        "time": res.timeout_min,
        "mem": f"{max(1, math.ceil(res.mem_gb * 1024))}MB",  # never 0: sbatch reads --mem=0 as "all of it"
        "cpus_per_task": res.cpus_per_task,
        "nodes": 1 if single else res.nodes,
        "ntasks_per_node": 1 if single else res.tasks,
        "signal_delay_s": ex.signal_delay_s,
        "array_parallelism": res.array_parallelism,
        "stderr_to_stdout": True,
    }
    if res.gpus_per_node and not finalize:
        params["gpus_per_node"] = res.gpus_per_node
    for key in ("partition", "account", "qos"):
        value = getattr(res, key) or getattr(ex, key)
        if value:
            params[key] = value
    if res.constraint:
        params["constraint"] = res.constraint
    setup = ["export LMHPC_EXECUTOR=slurm"]
    for name, value in sorted(ex.env.items()):
        setup.append(f"export {name}={shlex.quote(value)}")
    setup += list(ex.setup)
    params["setup"] = setup
    # one rank killed (kill -9, OOM, segfault) ends the step at once instead of leaving the others blocked
    # in a collective until the time limit; lmhpc.launch.crash then requeues the job
    srun_args: list[str] = ["--kill-on-bad-exit=1"]
    # the batch shell runs outside any container: the interpreter that submitted, unless jobs name their own
    python = shlex.quote((not ex.container and ex.python) or sys.executable)
    if spec.kind == "mpi" and not finalize:
        srun_args.append(f"--mpi={ex.mpi}")
        # a requeued job keeps its id: clear what its killed ranks left in /dev/shm before MPI_Init
        setup.append(f"{python} -m lmhpc.launch.crash --mpi-shm || true")
    if ex.container:
        srun_args.append(f"--container-image={ex.container}")
        if ex.container_mounts:
            srun_args.append(f"--container-mounts={','.join(ex.container_mounts)}")
    params["srun_args"] = srun_args
    params["teardown"] = [
        "lmhpc_code=$?",
        'if [ "$lmhpc_code" -ge 128 ]; then',
        f"  {python} -m lmhpc.launch.crash {stage} {shlex.quote(str(cfg.run_dir / stage))} {res.max_requeues} "
        '"$lmhpc_code" && exit 75',
        "fi",
        'exit "$lmhpc_code"',
    ]
    params["additional_parameters"] = {"requeue": True, "kill-on-invalid-dep": "yes"}
    return params


def sbatch_options(cfg: RunConfig, stage: str) -> list[str]:
    """One stage's resources as sbatch command-line options (which win over a script's own
    ``#SBATCH`` lines): what slurm/pipeline.sh adds when ``lmhpc plan`` lists them after a stage's
    ``name kind tasks``, so the plain scripts run with the config's limits as the submitit jobs do."""
    params = executor_parameters(cfg, stage)
    opts = {
        "time": params["time"],
        "mem": params["mem"],
        "cpus-per-task": params["cpus_per_task"],
        "nodes": params["nodes"],
        "signal": f"USR2@{params['signal_delay_s']}",
    }
    if STAGES[stage].kind in ("mpi", "torch"):
        opts["ntasks-per-node"] = params["ntasks_per_node"]
    for key in ("gpus_per_node", "partition", "account", "qos", "constraint"):
        if params.get(key):
            opts[key.replace("_", "-")] = params[key]
    out = []
    for key, value in opts.items():
        text = str(value)
        if not text or any(c.isspace() for c in text):
            raise ValueError(f"resources of stage {stage}: {key}={text!r} cannot be passed as one sbatch option")
        out.append(f"--{key}={text}")
    return out


class LmhpcSlurmExecutor(submitit.SlurmExecutor):
    """submitit's executor whose jobs start in :mod:`lmhpc.launch.entry` (the preemption flag is installed
    before any import) instead of ``submitit.core._submit``."""

    @property
    def _submitit_command_str(self) -> str:
        return " ".join([self.python, "-u -m lmhpc.launch.entry", shlex.quote(str(self.folder))])


def make_executor(cfg: RunConfig, stage: str, finalize: bool = False, dependency: str | None = None):
    folder = cfg.run_dir / "slurm" / stage / "%j"
    res = cfg.resources_for(stage)
    executor = LmhpcSlurmExecutor(folder=folder, max_num_timeout=res.max_requeues)
    params = executor_parameters(cfg, stage, finalize)
    if dependency:
        params["additional_parameters"] = {**params["additional_parameters"], "dependency": dependency}
    executor.update_parameters(**params)
    if cfg.executor.python:
        executor.python = shlex.quote(cfg.executor.python)
    return executor


def render_scripts(cfg: RunConfig, stages: list[str]) -> dict[str, str]:
    """The sbatch scripts submission would produce, by job name (for ``--dry-run``)."""
    scripts: dict[str, str] = {}
    previous: list[str] = []
    for stage in stages:
        spec = STAGES[stage]
        # (name, finalize, map_count): one part per array (or the job), then the array stage's finalize
        parts: list[tuple[str, bool, int | None]] = []
        if spec.kind == "array":
            chunks = array_chunks(cfg.resources_for(stage).tasks, max_array_size())
            for chunk in chunks:
                # submitit sends a one-task map as a plain job
                parts.append((array_part_name(job_name(cfg, stage), chunk, len(chunks)), False,
                              len(chunk) if len(chunk) > 1 else None))
            parts.append((job_name(cfg, stage, True), True, None))
        else:
            parts.append((job_name(cfg, stage), False, None))
        stage_names: list[str] = []
        for name, finalize, map_count in parts:
            if finalize:
                previous = stage_names
            dep = "afterok:" + ":".join(f"<{p}>" for p in previous) if previous else None
            ex = make_executor(cfg, stage, finalize, dep)
            params = dict(ex.parameters)
            if map_count:
                params["map_count"] = map_count
            scripts[name] = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)
            stage_names.append(name)
        previous = [parts[-1][0]]
    return scripts


class SlurmPipeline:
    """Submits the chain and returns at once; job ids go to ``pipeline.json``."""

    def __init__(self, cfg: RunConfig, config_path: str, overrides: list[str]) -> None:
        self.cfg = cfg
        self.config_path = str(Path(config_path).resolve())
        self.overrides = overrides
        self.state = PipelineState(cfg.run_dir)

    def submit(self, stages: list[str]) -> dict[str, list[str]]:
        """Submit every stage not done yet, each after the previous one; returns the job ids by stage
        (array stages: the arrays' ids, then the finalize job's)."""
        with scrubbed_environ():
            return self._submit(stages)

    def _submit(self, stages: list[str]) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = {}
        dependency: str | None = None
        self.state.record_submission("slurm", stages)
        for stage in stages:
            if (self.cfg.run_dir / stage / "DONE").exists():
                self.state.update(stage, state="done")
                continue
            spec = STAGES[stage]
            res = self.cfg.resources_for(stage)
            executor = make_executor(self.cfg, stage, dependency=dependency)
            if spec.kind == "array":
                n = res.tasks
                array_ids = []
                for chunk in array_chunks(n, max_array_size()):
                    # absolute task indices: each array of a split stage knows its share
                    jobs = executor.map_array(
                        StageJob(stage, self.config_path, self.overrides), list(chunk), [n] * len(chunk)
                    )
                    array_ids.append(jobs[0].job_id.split("_")[0])
                fin_exec = make_executor(
                    self.cfg, stage, finalize=True, dependency="afterok:" + ":".join(array_ids)
                )
                fin = fin_exec.submit(StageJob(stage, self.config_path, self.overrides, finalize=True))
                stage_ids = [*array_ids, fin.job_id]
                dependency = f"afterok:{fin.job_id}"
            else:
                job = executor.submit(StageJob(stage, self.config_path, self.overrides))
                stage_ids = [job.job_id]
                dependency = f"afterok:{job.job_id}"
            ids[stage] = stage_ids
            self.state.update(stage, state="submitted", job_ids=stage_ids)
            print(f"[lmhpc] {stage}: submitted job(s) {' '.join(stage_ids)}")
        return ids
