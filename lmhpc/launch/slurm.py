"""The SLURM executor: every stage a submitit job, chained with ``afterok`` dependencies.

- array stages: one SLURM array (``map_array``) over task indices, then a finalize job that
  depends on the whole array;
- mpi stages: one job of N tasks launched by ``srun --mpi=pmi2``;
- torch stages: one task per GPU (or per process on CPU) with submitit's
  ``TorchDistributedEnvironment``;
- every job: ``--requeue``, ``--kill-on-invalid-dep=yes`` (a failed stage cancels its dependants),
  ``--signal=USR2@<delay>`` and ``--open-mode=append`` (from submitit).

The job itself is :class:`StageJob`, a ``Checkpointable``: on requeue it runs again and the stage
resumes from what it saved.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable
from submitit.slurm.slurm import _make_sbatch_string

from lmhpc.config import RunConfig, load_config
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE
from lmhpc.launch.state import PipelineState
from lmhpc.stages import STAGES

log = logging.getLogger("lmhpc.slurm")


class StageJob(Checkpointable):
    """What every SLURM task runs: load the config, run (a part of) one stage in this process."""

    def __init__(self, stage: str, config_path: str, overrides: list[str], finalize: bool = False) -> None:
        self.stage = stage
        self.config_path = config_path
        self.overrides = list(overrides)
        self.finalize = finalize

    def __call__(self, task: int | None = None, num_tasks: int | None = None) -> int:
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
        "mem": f"{int(res.mem_gb * 1024)}MB",
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
    srun_args: list[str] = []
    if spec.kind == "mpi" and not finalize:
        srun_args.append(f"--mpi={ex.mpi}")
    if ex.container:
        srun_args.append(f"--container-image={ex.container}")
        if ex.container_mounts:
            srun_args.append(f"--container-mounts={','.join(ex.container_mounts)}")
    if srun_args:
        params["srun_args"] = srun_args
    params["additional_parameters"] = {"requeue": True, "kill-on-invalid-dep": "yes"}
    return params


def make_executor(cfg: RunConfig, stage: str, finalize: bool = False, dependency: str | None = None):
    folder = cfg.run_dir / "slurm" / stage / "%j"
    res = cfg.resources_for(stage)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=res.max_requeues)
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
    previous = None
    for stage in stages:
        spec = STAGES[stage]
        parts = [(False, spec.kind == "array")]
        if spec.kind == "array":
            parts.append((True, False))
        for finalize, is_array in parts:
            dep = f"afterok:<{previous}>" if previous else None
            ex = make_executor(cfg, stage, finalize, dep)
            params = dict(ex.parameters)
            if is_array:
                params["map_count"] = cfg.resources_for(stage).tasks
            name = job_name(cfg, stage, finalize)
            scripts[name] = _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **params)
            previous = name
    return scripts


class SlurmPipeline:
    """Submits the chain and returns at once; job ids go to ``pipeline.json``."""

    def __init__(self, cfg: RunConfig, config_path: str, overrides: list[str]) -> None:
        self.cfg = cfg
        self.config_path = str(Path(config_path).resolve())
        self.overrides = overrides
        self.state = PipelineState(cfg.run_dir)

    def submit(self, stages: list[str]) -> dict[str, list[str]]:
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
                jobs = executor.map_array(
                    StageJob(stage, self.config_path, self.overrides), list(range(n)), [n] * n
                )
                array_id = jobs[0].job_id.split("_")[0]
                fin_exec = make_executor(self.cfg, stage, finalize=True, dependency=f"afterok:{array_id}")
                fin = fin_exec.submit(StageJob(stage, self.config_path, self.overrides, finalize=True))
                stage_ids = [array_id, fin.job_id]
                dependency = f"afterok:{fin.job_id}"
            else:
                job = executor.submit(StageJob(stage, self.config_path, self.overrides))
                stage_ids = [job.job_id]
                dependency = f"afterok:{job.job_id}"
            ids[stage] = stage_ids
            self.state.update(stage, state="submitted", job_ids=stage_ids)
            print(f"[lmhpc] {stage}: submitted job(s) {' '.join(stage_ids)}")
        return ids
