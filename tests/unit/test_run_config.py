from __future__ import annotations

import json

import pytest

from lmhpc.config import ConfigError, RunConfig, apply_overrides, dump_json, load_config, parse_override


def test_defaults_load(make_config, tmp_path):
    path = make_config({"run": {"stages": ["curate"]}, "curate": {"inputs": [{"path": "x/*.jsonl"}]}})
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.run.name == "t"
    assert cfg.curate.inputs[0].path == "x/*.jsonl"
    assert cfg.run_dir == tmp_path / "runs" / "t"
    assert cfg.path("x") == tmp_path / "x"  # relative to the config file's folder


def test_unknown_key_names_key_and_file(make_config):
    path = make_config({"curate": {"inputs": [{"path": "a"}], "shard_max_mbb": 3}})
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "curate.shard_max_mbb" in str(e.value)
    assert str(path) in str(e.value)


def test_wrong_type_names_key(make_config):
    path = make_config({"run": {"seed": "abc"}, "curate": {"inputs": [{"path": "a"}]}})
    with pytest.raises(ConfigError, match=r"run\.seed.*expected an integer"):
        load_config(path)


def test_nested_list_item_type(make_config):
    path = make_config({"curate": {"inputs": [{"path": 3}]}})
    with pytest.raises(ConfigError, match=r"curate\.inputs\[0\]\.path"):
        load_config(path)


def test_impossible_value(make_config):
    path = make_config({"curate": {"inputs": [{"path": "a"}], "max_bad_fraction": 2}})
    with pytest.raises(ConfigError, match="curate.max_bad_fraction"):
        load_config(path)


def test_unknown_stage(make_config):
    path = make_config({"run": {"stages": ["curate", "nope"]}, "curate": {"inputs": [{"path": "a"}]}})
    with pytest.raises(ConfigError, match="run.stages"):
        load_config(path)


def test_resources_validation(make_config):
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "resources": {"curate": {"tasks": 0}}})
    with pytest.raises(ConfigError, match=r"resources\.curate\.tasks"):
        load_config(path)
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "resources": {"bogus": {"tasks": 1}}})
    with pytest.raises(ConfigError, match=r"resources\.bogus"):
        load_config(path)


def test_overrides_parse_and_apply(make_config):
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=x y") == (["a", "b"], "x y")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError):
        parse_override("a..b=1")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}
    path = make_config({"curate": {"inputs": [{"path": "a"}]}})
    cfg = load_config(path, ["run.seed=7", "resources.curate.tasks=3", "curate.shard_max_mb=0.5"])
    assert cfg.run.seed == 7 and cfg.resources_for("curate").tasks == 3 and cfg.curate.shard_max_mb == 0.5
    with pytest.raises(ConfigError, match="run.seedd"):
        load_config(path, ["run.seedd=7"])


def test_run_name_must_be_plain(make_config):
    path = make_config({"run": {"name": "a/b"}, "curate": {"inputs": [{"path": "a"}]}})
    with pytest.raises(ConfigError, match="run.name"):
        load_config(path)


def test_newline_in_sbatch_value_rejected(make_config):
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "executor": {"partition": "debug\n#SBATCH --x"}})
    with pytest.raises(ConfigError, match="executor.partition"):
        load_config(path)


def test_secret_env_rejected_and_dump_redacts(make_config):
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "executor": {"env": {"WANDB_API_KEY": "k"}}})
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        load_config(path)
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "executor": {"env": {"OMP_NUM_THREADS": "2"}}})
    cfg = load_config(path)
    data = json.loads(dump_json(cfg))
    assert data["executor"]["env"] == {"OMP_NUM_THREADS": "2"}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)


def test_profile_fills_executor(make_config, tmp_path):
    prof = tmp_path / "prof.yaml"
    prof.write_text("partition: gpu\naccount: acct\nsetup: ['echo hi']\n")
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "executor": {"profile": str(prof), "account": "mine"}})
    cfg = load_config(path)
    assert cfg.executor.partition == "gpu"
    assert cfg.executor.account == "mine"  # the config wins over the profile
    assert cfg.executor.setup == ["echo hi"]
    bad = tmp_path / "badprof.yaml"
    bad.write_text("partitionn: gpu\n")
    path = make_config({"curate": {"inputs": [{"path": "a"}]}, "executor": {"profile": str(bad)}})
    with pytest.raises(ConfigError, match=r"executor\.partitionn.*badprof"):
        load_config(path)


def test_demo_config_loads(repo_root):
    cfg = load_config(repo_root / "configs" / "demo.yaml")
    assert cfg.executor.partition == "debug"  # from slurm/profiles/local.yaml
    assert cfg.run.stages[0] == "curate"
