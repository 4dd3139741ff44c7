"""Chain integrity on the real cluster: a preempted array task other than task 0 requeues itself,
requeues stop at ``max_requeues``, arrays larger than MaxArraySize are split, jobs submitted from
inside a job do not inherit its SLURM settings, and a resubmission of one array index works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import tree_bytes, write_jsonl_corpus
from tests.slurm.test_pipeline_slurm import lmhpc, slurm_config, wait_status

pytestmark = [pytest.mark.slurm, pytest.mark.xdist_group("slurm")]
REPO = Path(__file__).resolve().parents[2]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def job_ids(run_dir: Path, stage: str) -> list[str]:
    return json.loads((run_dir / "pipeline.json").read_text())["stages"][stage]["job_ids"]


def stage_log(run_dir: Path, stage: str) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run_dir / "slurm" / stage).rglob("*.out")))


def done_units(run_dir: Path, stage: str) -> list[int]:
    return sorted(int(p.stem) for p in (run_dir / stage / "_units").glob("*.json") if p.stem.isdigit())


def set_resources(config: Path, stage: str, **values: object) -> None:
    data = yaml.safe_load(config.read_text())
    data["resources"][stage].update(values)
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def fake_max_array_size(tmp_path: Path, env: dict[str, str], size: int) -> dict[str, str]:
    """``env`` with an ``scontrol`` first on PATH that reports MaxArraySize=size and passes every other
    call to the real one."""
    real = shutil.which("scontrol", path=env.get("PATH"))
    assert real, "scontrol not found"
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "scontrol"
    script.write_text(
        "#!/bin/bash\n"
        f'if [ "$1 $2" = "show config" ]; then {real} show config | '
        f"sed -E 's/^(MaxArraySize +=).*/\\1 {size}/'; else exec {real} \"$@\"; fi\n"
    )
    script.chmod(0o755)
    return {**env, "PATH": f"{bin_dir}:{env.get('PATH', '')}"}


def test_signalled_array_task_1_requeues_itself_and_the_chain_finishes(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=40, docs_per_file=2000)
    cfg = slurm_config(tmp_path, corpus, name="task1", tasks=2)
    lmhpc(env, "run", str(cfg), "--executor", "slurm")
    run_dir = tmp_path / "runs" / "task1"
    array_id, final_id = job_ids(run_dir, "curate")
    # task 1 owns the odd units: signal it once it finished one, while it has more to do
    wait_for(lambda: any(i % 2 for i in done_units(run_dir, "curate")), 180, "task 1's first unit")
    slurm_cluster.run("scancel", "--signal=USR2", f"{array_id}_1")
    odd_before = [i for i in done_units(run_dir, "curate") if i % 2]
    assert len(odd_before) < 20, "task 1 finished before it could be signalled"

    rows = wait_status(env, run_dir, timeout=300)

    assert rows[0]["state"] == "done", (rows, stage_log(run_dir, "curate")[-3000:])
    tasks = slurm_cluster.wait_final(array_id, tasks=2)
    assert {k: v.state for k, v in tasks.items()} == {f"{array_id}_0": "COMPLETED", f"{array_id}_1": "COMPLETED"}
    assert slurm_cluster.wait_final(final_id)[final_id].state == "COMPLETED"
    history = [(r.job_id, r.state) for r in slurm_cluster.sacct(array_id, duplicates=True)]
    assert (f"{array_id}_1", "REQUEUED") in history, history
    assert (f"{array_id}_0", "REQUEUED") not in history, history  # only the signalled task reran
    assert f"requeueing SLURM job {array_id}_1" in stage_log(run_dir, "curate")
    lmhpc(env, "run", str(cfg), "--executor", "local", "run.name=clean")
    assert tree_bytes(run_dir / "curate" / "data") == tree_bytes(tmp_path / "runs" / "clean" / "curate" / "data")


def test_requeues_stop_at_max_requeues(slurm_cluster, tmp_path):
    env = slurm_cluster.env
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=1, docs_per_file=100_000)
    cfg = slurm_config(tmp_path, corpus, name="budget", tasks=1, curate__write_dropped=True)
    set_resources(cfg, "curate", max_requeues=1)
    lmhpc(env, "run", str(cfg), "--executor", "slurm")
    run_dir = tmp_path / "runs" / "budget"
    job, final_id = job_ids(run_dir, "curate")
    stage_dir = run_dir / "curate"

    def unit_open() -> bool:  # the unit's first shard is being written: the handler is installed
        return any(stage_dir.glob("*/.part-00000-*.tmp"))

    # the one unit never fits: every attempt is signalled while inside it
    for attempt in range(2):
        wait_for(unit_open, 180, f"attempt {attempt} inside its unit")
        slurm_cluster.run("scancel", "--signal=USR2", job)
        wait_for(lambda: not unit_open(), 60, f"attempt {attempt} leaving its unit")

    rows = slurm_cluster.wait_final(job, timeout=180)

    assert [r.state for r in rows.values()] == ["FAILED"], (rows, stage_log(run_dir, "curate")[-3000:])
    assert [r.state for r in slurm_cluster.sacct(job, duplicates=True)] == ["REQUEUED", "FAILED"]
    log = stage_log(run_dir, "curate")
    assert "unit 0" in log and "resources.curate.max_requeues=1" in log, log[-3000:]
    assert slurm_cluster.wait_final(final_id, timeout=60)[final_id].state == "CANCELLED"
    assert not (run_dir / "curate" / "DONE").exists()


def test_array_larger_than_max_array_size_is_split(slurm_cluster, tmp_path):
    env = fake_max_array_size(tmp_path, slurm_cluster.env, 2)
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=5, docs_per_file=30)
    cfg = slurm_config(tmp_path, corpus, name="split", tasks=3)
    lmhpc(env, "run", str(cfg), "--executor", "slurm")
    run_dir = tmp_path / "runs" / "split"
    ids = job_ids(run_dir, "curate")
    assert len(ids) == 3, ids  # an array of two tasks, a one-task job, the finalize job

    rows = wait_status(env, run_dir, timeout=240)

    assert rows[0]["state"] == "done", rows
    first = slurm_cluster.wait_final(ids[0], tasks=2)
    second = slurm_cluster.wait_final(ids[1])
    final = slurm_cluster.wait_final(ids[2])[ids[2]]
    assert final.state == "COMPLETED"
    assert all(final.start >= r.end for r in [*first.values(), *second.values()])
    lmhpc(env, "run", str(cfg), "--executor", "local", "run.name=clean", "resources.curate.tasks=1")
    assert tree_bytes(run_dir / "curate" / "data") == tree_bytes(tmp_path / "runs" / "clean" / "curate" / "data")


def test_run_submitted_from_inside_a_job_does_not_inherit_its_slurm_settings(slurm_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=20)
    cfg = slurm_config(tmp_path, corpus, name="inner", tasks=1)
    # the outer job's --mem-per-cpu reaches its environment as SLURM_MEM_PER_CPU; inherited by a job
    # that asks for --mem, it makes that job's srun refuse to start
    outer = slurm_cluster.run(
        "sbatch", "--parsable", "--mem-per-cpu=200M", f"--chdir={REPO}", f"--output={tmp_path}/outer-%j.out",
        f"--wrap={sys.executable} -m lmhpc run {cfg} --executor slurm",
    ).stdout.strip()
    assert slurm_cluster.wait_final(outer, timeout=120)[outer].state == "COMPLETED"
    run_dir = tmp_path / "runs" / "inner"

    rows = wait_status(slurm_cluster.env, run_dir, timeout=240)

    assert rows[0]["state"] == "done", (rows, stage_log(run_dir, "curate")[-3000:])
    assert (run_dir / "curate" / "DONE").exists()


def test_sbatch_array_resubmission_of_one_index_takes_the_task_count_from_the_config(slurm_cluster, tmp_path):
    env = dict(slurm_cluster.env, LMHPC_PYTHON=sys.executable, LMHPC_ROOT=str(REPO))
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=6, docs_per_file=20)
    cfg = slurm_config(tmp_path, corpus, name="resub", tasks=3)
    out = subprocess.run(
        ["sbatch", "--parsable", "--array=1", "--partition=debug", f"--chdir={tmp_path}",
         str(REPO / "slurm" / "curate.sbatch"), str(cfg)],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    rows = slurm_cluster.wait_final(job, timeout=120)
    run_dir = tmp_path / "runs" / "resub"
    assert [r.state for r in rows.values()] == ["COMPLETED"], list(tmp_path.glob("*.out"))
    assert done_units(run_dir, "curate") == [1, 4]  # task 1 of 3, not task 1 of a 1-task array


def run_pipeline_sh(env: dict[str, str], cfg: Path, cwd: Path) -> list[tuple[str, str]]:
    out = subprocess.run(["bash", str(REPO / "slurm" / "pipeline.sh"), str(cfg)], capture_output=True, text=True,
                         env=env, cwd=cwd, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return [tuple(line.split()) for line in out.stdout.splitlines()]


def test_pipeline_sh_splits_an_array_larger_than_max_array_size(slurm_cluster, tmp_path):
    env = fake_max_array_size(tmp_path, dict(slurm_cluster.env, LMHPC_PYTHON=sys.executable,
                                             SBATCH_PARTITION="debug"), 2)
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=5, docs_per_file=20)
    cfg = slurm_config(tmp_path, corpus, name="plainsplit", tasks=3)

    jobs = run_pipeline_sh(env, cfg, tmp_path)

    assert [name for name, _ in jobs] == ["curate", "curate", "curate.finalize"], jobs
    (_, first), (_, second), (_, final) = jobs
    arrays = {**slurm_cluster.wait_final(first, tasks=2, timeout=120), **slurm_cluster.wait_final(second, timeout=120)}
    assert {r.state for r in arrays.values()} == {"COMPLETED"}, arrays
    assert slurm_cluster.wait_final(final, timeout=120)[final].state == "COMPLETED"
    run_dir = tmp_path / "runs" / "plainsplit"
    assert done_units(run_dir, "curate") == [0, 1, 2, 3, 4]
    assert (run_dir / "curate" / "DONE").exists()


def test_pipeline_sh_inside_a_job_does_not_pass_on_its_slurm_settings(slurm_cluster, tmp_path):
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=20)
    cfg = slurm_config(tmp_path, corpus, name="plaininner", tasks=1)
    env = dict(slurm_cluster.env, LMHPC_PYTHON=sys.executable, LMHPC_ROOT=str(REPO))
    out = subprocess.run(
        ["sbatch", "--parsable", "--mem-per-cpu=200M", "--partition=debug", f"--chdir={tmp_path}",
         f"--output={tmp_path}/outer-%j.out", f"--wrap=bash {REPO}/slurm/pipeline.sh {cfg}"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    outer = out.stdout.strip()
    assert slurm_cluster.wait_final(outer, timeout=120)[outer].state == "COMPLETED"
    jobs = dict(line.split() for line in (tmp_path / f"outer-{outer}.out").read_text().splitlines())
    final = slurm_cluster.wait_final(jobs["curate.finalize"], timeout=120)[jobs["curate.finalize"]]
    logs = "".join(p.read_text() for p in tmp_path.glob("lmhpc.*.out"))
    assert final.state == "COMPLETED", logs
    assert (tmp_path / "runs" / "plaininner" / "curate" / "DONE").exists()
