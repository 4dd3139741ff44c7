"""slurm/pipeline.sh without a cluster: the sbatch calls it makes for the lines of ``lmhpc plan``
(an interpreter stand-in prints them), with an ``sbatch`` that records its arguments and environment
and an ``scontrol`` that reports MaxArraySize."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "slurm" / "pipeline.sh"


class FakeCluster:
    """Stand-ins on PATH; ``calls()`` lists each sbatch call as (arguments, SLURM_*/SBATCH_* variables)."""

    def __init__(self, root: Path, max_array_size: int = 1001) -> None:
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.log = root / "sbatch.jsonl"
        self._script("sbatch", f"""
            import json, os, sys
            log = {str(self.log)!r}
            n = 100 + (sum(1 for _ in open(log)) if os.path.exists(log) else 0)
            env = {{k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_"))}}
            with open(log, "a") as f:
                f.write(json.dumps({{"args": sys.argv[1:], "env": env}}) + "\\n")
            print(n)
        """)
        self._script("scontrol", f"""
            import sys
            if sys.argv[1:3] == ["show", "config"]:
                print("MaxArraySize            = {max_array_size}")
        """)
        self.python = self._script("plan-python", """
            import os, sys
            assert sys.argv[1:4] == ["-m", "lmhpc", "plan"], sys.argv
            with open(os.path.join(os.environ["FAKE_PLAN_DIR"], "args"), "w") as f:
                f.write(" ".join(sys.argv[4:]))
            print(os.environ["FAKE_PLAN"])
        """)

    def _script(self, name: str, body: str) -> Path:
        import sys
        import textwrap

        path = self.bin / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return path

    def run(self, plan: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        full = {**base, "PATH": f"{self.bin}:{os.environ['PATH']}", "LMHPC_PYTHON": str(self.python),
                "FAKE_PLAN": plan, "FAKE_PLAN_DIR": str(self.root), **env}
        return subprocess.run(["bash", str(PIPELINE), "cfg.yaml", *args], capture_output=True, text=True,
                              env=full, cwd=self.root, timeout=60)

    def calls(self) -> list[tuple[list[str], dict[str, str]]]:
        if not self.log.exists():
            return []
        return [(c["args"], c["env"]) for c in map(json.loads, self.log.read_text().splitlines())]


@pytest.fixture
def cluster(tmp_path: Path) -> FakeCluster:
    return FakeCluster(tmp_path)


def test_stages_kinds_and_tasks_come_from_the_plan(cluster):
    plan = "curate array 2\ndedup mpi 3\ntokenizer single 1\nalign single 1\npretrain torch 4"
    out = cluster.run(plan, "run.seed=7")
    assert out.returncode == 0, out.stderr
    assert (cluster.root / "args").read_text() == "cfg.yaml run.seed=7"
    assert out.stdout.split("\n")[:-1] == [
        "curate 100", "curate.finalize 101", "dedup 102", "tokenizer 103", "align 104", "pretrain 105",
    ]
    calls = [args for args, _ in cluster.calls()]
    s = str(REPO / "slurm")
    assert calls[0] == ["--parsable", "--kill-on-invalid-dep=yes", "--array=0-1",
                        "--export=ALL,LMHPC_TASK_OFFSET=0,LMHPC_STAGE_KIND=array", f"{s}/curate.sbatch", "cfg.yaml",
                        "run.seed=7"]
    assert calls[1] == ["--parsable", "--kill-on-invalid-dep=yes", "--dependency=afterok:100",
                        f"{s}/finalize.sbatch", "curate", "cfg.yaml", "run.seed=7"]
    assert calls[2][2:5] == ["--dependency=afterok:101", "--ntasks=3", "--export=ALL,LMHPC_STAGE_KIND=mpi"]
    assert calls[2][5] == f"{s}/dedup.sbatch"
    # a stage without a script of its own runs the generic one, named after it
    assert calls[4][2:] == ["--dependency=afterok:103", "--export=ALL,LMHPC_STAGE_KIND=single",
                            "--job-name=lmhpc.align", f"{s}/stage.sbatch", "align", "cfg.yaml", "run.seed=7"]
    assert calls[5][2:5] == ["--dependency=afterok:104", "--ntasks-per-node=4", "--export=ALL,LMHPC_STAGE_KIND=torch"]


def test_array_beyond_max_array_size_goes_out_as_several_arrays(tmp_path):
    cluster = FakeCluster(tmp_path, max_array_size=2)
    out = cluster.run("tokenize array 5\npretrain torch 1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:-1] == [
        "tokenize 100", "tokenize 101", "tokenize 102", "tokenize.finalize 103", "pretrain 104",
    ]
    calls = [args for args, _ in cluster.calls()]
    assert [c[2:4] for c in calls[:3]] == [
        ["--array=0-1", "--export=ALL,LMHPC_TASK_OFFSET=0,LMHPC_STAGE_KIND=array"],
        ["--array=0-1", "--export=ALL,LMHPC_TASK_OFFSET=2,LMHPC_STAGE_KIND=array"],
        ["--array=0-0", "--export=ALL,LMHPC_TASK_OFFSET=4,LMHPC_STAGE_KIND=array"],
    ]
    assert calls[3][2] == "--dependency=afterok:100:101:102"
    assert calls[4][2] == "--dependency=afterok:103"


def test_sbatch_options_on_a_plan_line_are_passed_on(cluster):
    out = cluster.run("curate array 2 --time=30 --mem=1024MB --partition=debug\npretrain torch 2 --cpus-per-task=1")
    assert out.returncode == 0, out.stderr
    calls = [args for args, _ in cluster.calls()]
    assert calls[0][3:7] == ["--export=ALL,LMHPC_TASK_OFFSET=0,LMHPC_STAGE_KIND=array", "--time=30", "--mem=1024MB",
                             "--partition=debug"]
    assert calls[1][3:5] == ["--partition=debug", str(REPO / "slurm" / "finalize.sbatch")]  # not --time, --mem
    assert "--cpus-per-task=1" in calls[2]


def test_inside_a_job_the_new_jobs_do_not_inherit_its_slurm_variables(cluster):
    job_env = {"SLURM_JOB_ID": "9", "SLURM_MEM_PER_CPU": "100", "SLURM_NTASKS": "4", "SLURM_ARRAY_TASK_ID": "1",
               "SBATCH_TIMELIMIT": "5", "SLURM_CONF": "/etc/x/slurm.conf"}
    out = cluster.run("curate array 1", **job_env)
    assert out.returncode == 0, out.stderr
    for _, env in cluster.calls():
        assert env == {"SLURM_CONF": "/etc/x/slurm.conf"}


def test_outside_a_job_sbatch_settings_stay(cluster):
    out = cluster.run("curate array 1", SBATCH_PARTITION="debug")
    assert out.returncode == 0, out.stderr
    assert all(env.get("SBATCH_PARTITION") == "debug" for _, env in cluster.calls())


def test_unknown_kind_stops_the_submission(cluster):
    out = cluster.run("weird mystery 1")
    assert out.returncode == 2
    assert "unknown kind 'mystery'" in out.stderr
