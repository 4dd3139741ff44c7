"""SLURM launch plumbing without a cluster: who requeues and how often, the first host of a node list,
the environment of submissions made from inside a job, MaxArraySize and array splitting, and
``lmhpc stage --task`` taking the task count from the config."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmhpc.config import load_config
from lmhpc.launch import preempt
from lmhpc.launch.hosts import expand_nodelist, first_host
from lmhpc.launch.preempt import REQUEUE_EXIT_CODE, requeue_or_exit
from tests.conftest import write_config
from tests.helpers import curate_config

REPO = Path(__file__).resolve().parents[2]
SLURM_JOB = {"LMHPC_EXECUTOR": "slurm", "SLURM_JOB_ID": "41", "SLURM_PROCID": "0", "SLURM_RESTART_COUNT": "0"}


@pytest.fixture
def scontrol_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every ``subprocess.run`` the preemption module makes, answered with success and never run."""
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(preempt.subprocess, "run", fake_run)
    return calls


def _job_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID", "SLURM_PROCID",
                 "SLURM_RESTART_COUNT", "LMHPC_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**SLURM_JOB, **env}.items():
        monkeypatch.setenv(name, value)


# --------------------------------------------------------------------------------------------
# who requeues, and how often


def test_array_task_requeues_itself_by_array_and_task_id(monkeypatch, scontrol_calls):
    # the last task of an array shares its SLURM_JOB_ID with the array: requeueing that id would
    # requeue every task, so the task is named as <array>_<task>
    _job_env(monkeypatch, SLURM_JOB_ID="7", SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="1")
    code = requeue_or_exit("curate", "stopping inside unit 3 (part-003.jsonl)", max_requeues=3)
    assert code == REQUEUE_EXIT_CODE
    assert scontrol_calls == [["scontrol", "requeue", "7_1"]]


def test_plain_job_requeues_by_job_id(monkeypatch, scontrol_calls):
    _job_env(monkeypatch, SLURM_JOB_ID="12")
    assert requeue_or_exit("dedup", "stopping after the signatures", max_requeues=3) == REQUEUE_EXIT_CODE
    assert scontrol_calls == [["scontrol", "requeue", "12"]]


def test_only_the_first_process_of_the_step_requeues(monkeypatch, scontrol_calls):
    _job_env(monkeypatch, SLURM_PROCID="1")
    assert requeue_or_exit("pretrain", "checkpoint at step 50 saved", max_requeues=3) == REQUEUE_EXIT_CODE
    assert scontrol_calls == []


def test_requeues_stop_when_the_budget_is_spent(monkeypatch, scontrol_calls, caplog):
    _job_env(monkeypatch, SLURM_RESTART_COUNT="2", SLURM_ARRAY_JOB_ID="7", SLURM_ARRAY_TASK_ID="0")
    with caplog.at_level(logging.ERROR, logger="lmhpc.launch.preempt"):
        code = requeue_or_exit("curate", "stopping inside unit 3 (part-003.jsonl)", max_requeues=2)
    assert code not in (0, REQUEUE_EXIT_CODE)
    assert scontrol_calls == []
    message = caplog.text
    assert "unit 3 (part-003.jsonl)" in message
    assert "resources.curate.max_requeues=2" in message


def test_every_process_of_the_step_fails_when_the_budget_is_spent(monkeypatch, scontrol_calls):
    _job_env(monkeypatch, SLURM_RESTART_COUNT="1", SLURM_PROCID="3")
    assert requeue_or_exit("pretrain", "step 10", max_requeues=1) not in (0, REQUEUE_EXIT_CODE)
    assert scontrol_calls == []


def test_max_requeues_zero_never_requeues(monkeypatch, scontrol_calls):
    _job_env(monkeypatch)
    assert requeue_or_exit("curate", "unit 0", max_requeues=0) not in (0, REQUEUE_EXIT_CODE)
    assert scontrol_calls == []


def test_outside_slurm_the_local_executor_gets_the_requeue_code(monkeypatch, scontrol_calls):
    _job_env(monkeypatch)
    monkeypatch.delenv("LMHPC_EXECUTOR")
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("LMHPC_ATTEMPT", "9")  # the local executor bounds its own attempts
    assert requeue_or_exit("curate", "unit 0", max_requeues=1) == REQUEUE_EXIT_CODE
    assert scontrol_calls == []


def test_failed_requeue_does_not_exit_for_a_requeue(monkeypatch):
    _job_env(monkeypatch, SLURM_JOB_ID="12")

    def refused(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "Invalid job id specified")

    monkeypatch.setattr(preempt.subprocess, "run", refused)
    # exiting 75 without a requeue would leave the job FAILED with its state saved but no rerun coming
    assert requeue_or_exit("curate", "unit 0", max_requeues=3) not in (0, REQUEUE_EXIT_CODE)


# --------------------------------------------------------------------------------------------
# the first host of a node list


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("gpu-[009-011]", ["gpu-009", "gpu-010", "gpu-011"]),
        ("a[1-2],b3,c[10]", ["a1", "a2", "b3", "c10"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("", []),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def _path_with(tmp_path: Path, scontrol_body: str | None) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if scontrol_body is not None:
        script = bin_dir / "scontrol"
        script.write_text("#!/bin/sh\n" + scontrol_body + "\n")
        script.chmod(0o755)
    return str(bin_dir)


def test_first_host_asks_scontrol(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, 'echo "$@" > ' + str(tmp_path / "args") + "; echo h1; echo h2"))
    assert first_host("weird[1-2]") == "h1"
    assert (tmp_path / "args").read_text().split() == ["show", "hostnames", "weird[1-2]"]


def test_first_host_without_scontrol_expands_the_list_itself(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, None))
    assert first_host("node[07-08,11]") == "node07"
    assert first_host("") is None


def test_torch_rank_under_plain_srun_rendezvous_on_the_first_node(tmp_path, monkeypatch):
    from lmhpc.runner import _distributed_identity

    monkeypatch.setenv("PATH", _path_with(tmp_path, None))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "x")  # recorded, so the test restores the process's own values
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-10]")
    rank, world, local, _ = _distributed_identity("torch")
    assert (rank, world, local) == (5, 8, 1)
    assert os.environ["MASTER_ADDR"] == "gpu07"
    assert os.environ["MASTER_PORT"] == str(20000 + 123)


# --------------------------------------------------------------------------------------------
# submissions from inside a job


def test_submission_env_inside_a_job_drops_what_the_job_was_given():
    from lmhpc.launch.slurm import submission_env

    env = {
        "SLURM_JOB_ID": "4",
        "SLURM_MEM_PER_CPU": "100",
        "SLURM_NTASKS": "2",
        "SLURM_ARRAY_TASK_ID": "1",
        "SBATCH_ARRAY_INX": "0-1",
        "SLURM_CONF": "/etc/x/slurm.conf",
        "PATH": "/bin",
        "LMHPC_EXECUTOR": "slurm",
    }
    assert submission_env(env) == {"SLURM_CONF": "/etc/x/slurm.conf", "PATH": "/bin", "LMHPC_EXECUTOR": "slurm"}


def test_submission_env_outside_a_job_is_left_alone():
    from lmhpc.launch.slurm import submission_env

    env = {"SBATCH_PARTITION": "debug", "SLURM_CONF": "/etc/x/slurm.conf", "PATH": "/bin"}
    assert submission_env(env) == env


def _fake_sbatch(tmp_path: Path, max_array_size: int = 1001) -> str:
    """A PATH holding an ``sbatch`` that records each submission (script and environment) and an
    ``scontrol`` that reports ``max_array_size``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "submitted"
    log.mkdir(exist_ok=True)
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        f'n=$(( $(ls {log} | wc -l) / 2 + 100 ))\n'
        f'cp "${{@: -1}}" {log}/$n.sh\n'
        f"env > {log}/$n.env\n"
        'echo "Submitted batch job $n"\n'
    )
    (bin_dir / "scontrol").write_text(
        f'#!/bin/bash\n[ "$1 $2" = "show config" ] && echo "MaxArraySize            = {max_array_size}"\n'
    )
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    return str(bin_dir) + os.pathsep + os.environ["PATH"]


def _slurm_config(tmp_path: Path, tasks: int) -> Path:
    data = curate_config(tmp_path, tmp_path / "corpus")
    data["executor"] = {"kind": "slurm"}
    data["resources"] = {"curate": {"tasks": tasks, "mem_gb": 1}}
    return write_config(tmp_path / "c.yaml", data)


def _submitted(tmp_path: Path) -> list[tuple[str, dict[str, str]]]:
    out = []
    for script in sorted((tmp_path / "submitted").glob("*.sh")):
        env = dict(line.split("=", 1) for line in script.with_suffix(".env").read_text().splitlines() if "=" in line)
        out.append((script.read_text(), env))
    return out


def test_pipeline_submitted_from_inside_a_job_does_not_pass_on_its_slurm_variables(tmp_path, monkeypatch):
    from lmhpc.launch import slurm

    monkeypatch.setenv("PATH", _fake_sbatch(tmp_path))
    for name, value in {"SLURM_JOB_ID": "9", "SLURM_MEM_PER_CPU": "100", "SLURM_NTASKS": "4",
                        "SBATCH_TIMELIMIT": "5", "SLURM_CONF": "/etc/x/slurm.conf"}.items():
        monkeypatch.setenv(name, value)
    path = _slurm_config(tmp_path, tasks=2)
    slurm.SlurmPipeline(load_config(path), str(path), []).submit(["curate"])
    submitted = _submitted(tmp_path)
    assert len(submitted) == 2  # the array and its finalize job
    for _, env in submitted:
        leaked = sorted(k for k in env if k.startswith(("SLURM_", "SBATCH_")))
        assert leaked == ["SLURM_CONF"], leaked
    # the submitting process keeps its own environment
    assert os.environ["SLURM_MEM_PER_CPU"] == "100" and os.environ["SLURM_JOB_ID"] == "9"


# --------------------------------------------------------------------------------------------
# MaxArraySize


def test_max_array_size_from_scontrol(tmp_path, monkeypatch):
    from lmhpc.launch import slurm

    monkeypatch.setenv("PATH", _fake_sbatch(tmp_path, max_array_size=40))
    slurm.max_array_size.cache_clear()
    try:
        assert slurm.max_array_size() == 40
    finally:
        slurm.max_array_size.cache_clear()


def test_max_array_size_falls_back_without_scontrol(tmp_path, monkeypatch):
    from lmhpc.launch import slurm

    monkeypatch.setenv("PATH", _path_with(tmp_path, None))
    slurm.max_array_size.cache_clear()
    try:
        assert slurm.max_array_size() == 1001
    finally:
        slurm.max_array_size.cache_clear()


def test_array_larger_than_max_array_size_is_split_and_finalize_waits_for_all(tmp_path, monkeypatch):
    from lmhpc.launch import slurm

    monkeypatch.setenv("PATH", _fake_sbatch(tmp_path, max_array_size=2))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    slurm.max_array_size.cache_clear()
    path = _slurm_config(tmp_path, tasks=5)
    try:
        ids = slurm.SlurmPipeline(load_config(path), str(path), []).submit(["curate"])
    finally:
        slurm.max_array_size.cache_clear()
    assert ids["curate"] == ["100", "101", "102", "103"]  # three arrays, then finalize
    scripts = [s for s, _ in _submitted(tmp_path)]
    assert "#SBATCH --array=0-1%2" in scripts[0] and "#SBATCH --array=0-1%2" in scripts[1]
    assert "--array" not in scripts[2]  # submitit sends a one-task map as a plain job
    assert "#SBATCH --dependency=afterok:100:101:102" in scripts[3]
    # each job carries its absolute task indices and the configured task count
    import pickle

    folder = load_config(path).run_dir / "slurm" / "curate"
    tasks = []
    for pkl in sorted(folder.rglob("*_submitted.pkl")):
        delayed = pickle.loads(pkl.read_bytes())
        if delayed.args:  # the finalize job takes none
            tasks.append(tuple(delayed.args))
    assert sorted(tasks) == [(t, 5) for t in range(5)]


def test_array_chunks():
    from lmhpc.launch.slurm import array_chunks

    assert array_chunks(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert array_chunks(3, 1001) == [range(0, 3)]
    with pytest.raises(ValueError, match="MaxArraySize"):
        array_chunks(3, 0)


# --------------------------------------------------------------------------------------------
# lmhpc stage --task I: the task count is the config's


def test_stage_task_without_num_tasks_takes_the_configured_tasks(tmp_path, monkeypatch):
    import lmhpc.runner
    from lmhpc.cli import main

    seen: dict[str, object] = {}

    def fake_run_stage(cfg, name, task=None, num_tasks=None, finalize=False):
        seen.update(name=name, task=task, num_tasks=num_tasks)
        return 0

    monkeypatch.setattr(lmhpc.runner, "run_stage", fake_run_stage)
    path = _slurm_config(tmp_path, tasks=5)
    assert main(["stage", "curate", str(path), "--task", "3"]) == 0
    assert seen == {"name": "curate", "task": 3, "num_tasks": 5}
    assert main(["stage", "curate", str(path), "--task", "5"]) == 2


# --------------------------------------------------------------------------------------------
# the stage's resources as sbatch options (for slurm/pipeline.sh)


def test_sbatch_options_carry_the_stage_resources(tmp_path):
    from lmhpc.launch.slurm import sbatch_options

    data = curate_config(tmp_path, tmp_path / "corpus")
    data["executor"] = {"kind": "slurm", "signal_delay_s": 45, "partition": "debug"}
    data["resources"] = {
        "curate": {"tasks": 3, "mem_gb": 0.5, "timeout_min": 7, "cpus_per_task": 2},
        "dedup": {"tasks": 4, "nodes": 2, "gpus_per_node": 1, "account": "proj"},
    }
    cfg = load_config(write_config(tmp_path / "c.yaml", data))
    assert sbatch_options(cfg, "curate") == [
        "--time=7", "--mem=512MB", "--cpus-per-task=2", "--nodes=1", "--signal=USR2@45", "--partition=debug",
    ]
    assert sbatch_options(cfg, "dedup") == [
        "--time=60", "--mem=4096MB", "--cpus-per-task=1", "--nodes=2", "--signal=USR2@45", "--ntasks-per-node=4",
        "--gpus-per-node=1", "--partition=debug", "--account=proj",
    ]


def test_signal_while_a_job_starts_is_kept_for_the_stage(tmp_path):
    """A SIGUSR2 that arrives before any stage code exists (the job is still importing) does not kill the
    process: lmhpc.launch.entry's flag keeps it, and the stage's flag takes it over (then the early flag is
    clear again)."""
    code = (
        "import os, signal, sys\n"
        "import lmhpc.launch.entry\n"  # what `python -m lmhpc.launch.entry` runs first
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "import torch  # the heavy imports a job does before its stage runs\n"
        "from lmhpc.launch.preempt import early_flag, stage_flag\n"
        "assert early_flag().is_set() and early_flag().signal_name == 'SIGUSR2'\n"
        "flag = stage_flag()\n"
        "assert flag.is_set() and flag.signal_name == 'SIGUSR2' and not early_flag().is_set()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"  # the stage's own flag now holds later signals
        "assert not early_flag().is_set()\n"
        "print('kept')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0 and "kept" in out.stdout, out.stderr[-2000:]


def test_jobs_start_in_the_entry_module(tmp_path):
    from lmhpc.launch.slurm import make_executor

    cfg = load_config(write_config(tmp_path / "c.yaml", curate_config(tmp_path, tmp_path / "corpus")))
    ex = make_executor(cfg, "curate")
    assert "-u -m lmhpc.launch.entry" in ex._submitit_command_str
    assert "submitit.core._submit" not in ex._submitit_command_str


def test_a_killed_rank_requeues_the_job_unless_the_stage_failed_itself(tmp_path, monkeypatch, scontrol_calls):
    """lmhpc.launch.crash after the step: exit 128+N with no failure recorded by the stage is a crash (the job
    is requeued, within max_requeues); an ordinary exit code, or the stage's own failure, is not retried."""
    from lmhpc.launch.crash import after_step
    from lmhpc.timing import record_event

    _job_env(monkeypatch, **SLURM_JOB)
    stage_dir = tmp_path / "dedup"
    assert not after_step("dedup", stage_dir, 3, 1)  # a Python failure: srun's own code
    assert not after_step("dedup", stage_dir, 3, 75)  # the stage saved and requeued itself
    assert after_step("dedup", stage_dir, 3, 137)  # kill -9 of a rank
    assert scontrol_calls == [["scontrol", "requeue", "41"]]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert not after_step("dedup", stage_dir, 3, 137)  # the budget is spent
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    record_event(stage_dir, "end", attempt=1, code=1)  # this job's attempt 1 failed on its own
    assert not after_step("dedup", stage_dir, 3, 143)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # a later attempt of the same job that was killed
    assert after_step("dedup", stage_dir, 3, 143)
    assert len(scontrol_calls) == 2


def test_rendered_jobs_end_the_step_on_a_dead_rank_and_requeue_after_a_crash(tmp_path):
    from lmhpc.launch.slurm import render_scripts

    cfg = load_config(write_config(tmp_path / "c.yaml", curate_config(tmp_path, tmp_path / "corpus")))
    script = next(iter(render_scripts(cfg, ["curate"]).values()))
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun and srun.endswith(str(cfg.run_dir / "slurm" / "curate" / "%j"))
    after = script[script.index(srun) + len(srun):]
    assert after.split("lmhpc_code=$?")[0].strip("\n #teardown") == ""  # nothing runs between srun and $?
    assert f"-m lmhpc.launch.crash curate {cfg.run_dir / 'curate'} " in after
    assert after.rstrip().endswith('exit "$lmhpc_code"')


def test_only_unmapped_old_mpi_segments_are_orphans(tmp_path):
    """What a killed rank leaves in /dev/shm is removed before a requeued MPI job starts; a segment a live
    process maps, one just created, or another program's file is kept."""
    import mmap
    import time as _time

    from lmhpc.launch.crash import orphan_mpi_shm

    old = _time.time() - 60
    dead = tmp_path / "mpich_shm_1f2e3d4c_0"
    live = tmp_path / "mpich_vci_1f2e3d4c_0"
    fresh = tmp_path / "mpich_shm_99_0"
    other = tmp_path / "mpich_notes_0"
    for path in (dead, live, fresh, other):
        path.write_bytes(b"\0" * 4096)
    for path in (dead, live, other):
        os.utime(path, (old, old))
    with open(live, "r+b") as f, mmap.mmap(f.fileno(), 4096):
        assert orphan_mpi_shm(tmp_path) == [dead]
    assert orphan_mpi_shm(tmp_path) == [dead, live]


def test_plain_sbatch_crash_check_reads_the_stage_arguments(tmp_path, monkeypatch, scontrol_calls):
    """slurm/common.sh passes `lmhpc stage`'s own arguments: the stage folder and the requeue budget come from
    the config and its overrides."""
    from lmhpc.launch.crash import main

    _job_env(monkeypatch, **SLURM_JOB)
    path = write_config(tmp_path / "c.yaml", curate_config(tmp_path, tmp_path / "corpus"))
    assert main(["--stage-args", "137", "curate", str(path), "--task", "0"]) == 0
    assert scontrol_calls == [["scontrol", "requeue", "41"]]
    assert main(["--stage-args", "137", "curate", str(path), "resources.curate.max_requeues=0"]) == 1
    assert main(["--stage-args", "1", "curate", str(path)]) == 1
    assert len(scontrol_calls) == 1
