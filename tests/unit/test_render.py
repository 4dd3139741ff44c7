"""Rendering of sbatch scripts (dry run), their SLURM options, and quoting of hostile config strings."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from lmhpc.config import ConfigError, load_config
from lmhpc.launch.slurm import render_scripts
from tests.conftest import write_config

HOSTILE = "it's \"quoted\" $(touch {marker}) `touch {marker}` ; touch {marker} \\ end"


def _config(tmp_path, **executor):
    data = {
        "run": {"name": "t", "runs_dir": str(tmp_path / "runs"), "stages": ["curate"]},
        "wandb": {"mode": "disabled"},
        "executor": {"kind": "slurm", **executor},
        "resources": {"curate": {"tasks": 3, "timeout_min": 7, "mem_gb": 2, "partition": "debug"}},
        "curate": {"inputs": [{"path": "x/*.jsonl"}]},
    }
    return load_config(write_config(tmp_path / "c.yaml", data))


def test_array_stage_renders_array_and_finalize(tmp_path):
    scripts = render_scripts(_config(tmp_path), ["curate"])
    assert list(scripts) == ["t.curate", "t.curate.finalize"]
    array, final = scripts["t.curate"], scripts["t.curate.finalize"]
    assert "#SBATCH --array=0-2%3" in array
    assert "#SBATCH --requeue" in array and "#SBATCH --kill-on-invalid-dep=yes" in array
    assert "#SBATCH --signal=USR2@90" in array and "#SBATCH --open-mode=append" in array
    assert "#SBATCH --time=7" in array and "#SBATCH --partition=debug" in array
    assert "--array" not in final
    assert "#SBATCH --dependency='afterok:<t.curate>'" in final
    assert "export LMHPC_EXECUTOR=slurm" in array


def test_hostile_env_values_are_quoted_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    value = HOSTILE.format(marker=marker) + "\nsecond line"
    cfg = _config(tmp_path, env={"LMHPC_NOTE": value})
    script = render_scripts(cfg, ["curate"])["t.curate"]
    setup = script.split("# setup\n", 1)[1].split("\n\n", 1)[0]
    # run the rendered setup lines; the value must arrive verbatim and nothing in it may run
    out = subprocess.run(["bash", "-c", setup + '\nprintf %s "$LMHPC_NOTE"'], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"]})
    assert out.returncode == 0, out.stderr
    assert out.stdout == value
    assert not marker.exists()


@pytest.mark.parametrize("key", ["partition", "account", "qos", "container"])
def test_newlines_cannot_inject_sbatch_lines(tmp_path, key):
    with pytest.raises(ConfigError, match=f"executor.{key}"):
        _config(tmp_path, **{key: "debug\n#SBATCH --wrap=touch /tmp/x"})


def test_quotes_in_header_values_are_quoted(tmp_path):
    marker = tmp_path / "pwned"
    cfg = _config(tmp_path, account=f"acct$(touch {marker})`touch {marker}`'x")
    script = render_scripts(cfg, ["curate"])["t.curate"]
    line = next(x for x in script.splitlines() if x.startswith("#SBATCH --account="))
    assert line.startswith("#SBATCH --account='")
    # the whole script is valid bash and running its header does nothing
    header = "\n".join(x for x in script.splitlines() if x.startswith("#"))
    subprocess.run(["bash", "-c", header], check=True)
    assert not marker.exists()


def test_cli_dry_run_prints_scripts_and_submits_nothing(tmp_path):
    _config(tmp_path)
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(tmp_path / "c.yaml"), "--dry-run"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"# ===== t\.curate =====", out.stdout)
    assert "#!/bin/bash" in out.stdout
    assert not (tmp_path / "runs" / "t" / "pipeline.json").exists()


def test_cli_bad_config_fails_before_submission(tmp_path):
    _config(tmp_path)
    out = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(tmp_path / "c.yaml"), "resources.curate.tasks=0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "resources.curate.tasks" in out.stderr and "c.yaml" in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("mem_gb", "rendered"), [(0.0001, "1MB"), (0.5, "512MB"), (2, "2048MB"), (1.0001, "1025MB")])
def test_mem_never_renders_zero(tmp_path, mem_gb, rendered):
    cfg = _config(tmp_path)
    cfg.resources["curate"].mem_gb = mem_gb
    for script in render_scripts(cfg, ["curate"]).values():
        assert f"#SBATCH --mem={rendered}\n" in script


def test_array_larger_than_max_array_size_renders_several_arrays(tmp_path, monkeypatch):
    from lmhpc.launch import slurm

    monkeypatch.setattr(slurm, "max_array_size", lambda: 2)
    scripts = render_scripts(_config(tmp_path), ["curate"])
    assert list(scripts) == ["t.curate[0-1]", "t.curate[2]", "t.curate.finalize"]
    assert "#SBATCH --array=0-1%2" in scripts["t.curate[0-1]"]
    assert "--array" not in scripts["t.curate[2]"]  # a one-task share is a plain job
    assert "#SBATCH --dependency='afterok:<t.curate[0-1]>:<t.curate[2]>'" in scripts["t.curate.finalize"]
