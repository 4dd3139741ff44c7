"""Config errors of the grpo and ppo stages name their key; reward functions, their loading, and the task
records (generation, reading, checks) behave as documented."""

from __future__ import annotations

import json

import pytest
import yaml

from lmhpc.config import ConfigError, load_config
from lmhpc.rl.rewards import exact_answer, format_reward, length_reward, load_reward_function, score
from lmhpc.rl.tasks import ANSWER_FORMATS, check_records, generate, read_records


def _load(tmp_path, stage: str, section: dict, resources: int = 1):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "c", "runs_dir": str(tmp_path / "runs"), "stages": [stage]},
                                    "resources": {stage: {"tasks": resources}},
                                    stage: {"init_from": str(model), **section}}))
    return load_config(path)


@pytest.mark.parametrize(("section", "key"), [
    ({"num_generations": 1}, "grpo.num_generations"),
    ({"train": {"global_batch_size": 12, "micro_batch_size": 4}}, "grpo.train.global_batch_size"),
    ({"loss_type": "sapo"}, "grpo.loss_type"),
    ({"scale_rewards": "rank"}, "grpo.scale_rewards"),
    ({"beta": -0.1}, "grpo.beta"),
    ({"epsilon_high": -0.5}, "grpo.epsilon_high"),
    ({"num_iterations": 0}, "grpo.num_iterations"),
    ({"rewards": [{"function": "lmhpc.rl.rewards:no_such"}]}, "grpo.rewards[0].function"),
    ({"rewards": [{"function": "no_module_here:f"}]}, "grpo.rewards[0].function"),
    ({"rewards": [{"function": "lmhpc.rl.rewards"}]}, "grpo.rewards[0].function"),
    ({"rewards": []}, "grpo.rewards"),
    ({"task": {"kinds": ["poetry"]}}, "grpo.task.kinds"),
    ({"task": {"files": ["missing/*.jsonl"]}}, "grpo.task.files[0]"),
    ({"task": {"num_records": 0}}, "grpo.task.num_records"),
    ({"sampling": {"temperature": 0}}, "grpo.sampling.temperature"),
    ({"sampling": {"top_p": 1.5}}, "grpo.sampling.top_p"),
    ({"init_from": "nowhere"}, "grpo.init_from"),
    ({"train": {"lr": 0}}, "grpo.train.lr"),
])
def test_grpo_config_errors_name_the_key(tmp_path, section, key):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "grpo", section)
    assert e.value.key == key, str(e.value)


@pytest.mark.parametrize(("section", "key"), [
    ({"rollout_batch_size": 12}, "ppo.rollout_batch_size"),
    ({"kl_estimator": "k2"}, "ppo.kl_estimator"),
    ({"gamma": 1.5}, "ppo.gamma"),
    ({"lam": -0.1}, "ppo.lam"),
    ({"cliprange": 0}, "ppo.cliprange"),
    ({"vf_coef": -1}, "ppo.vf_coef"),
    ({"num_ppo_epochs": 0}, "ppo.num_ppo_epochs"),
    ({"reward_model": "no/such/folder"}, "ppo.reward_model"),
    ({"rewards": []}, "ppo.rewards"),
])
def test_ppo_config_errors_name_the_key(tmp_path, section, key):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "ppo", section)
    assert e.value.key == key, str(e.value)


def test_good_configs_load(tmp_path):
    cfg = _load(tmp_path, "grpo", {"num_generations": 4, "train": {"global_batch_size": 8, "micro_batch_size": 4}})
    assert cfg.grpo.epsilon_upper == cfg.grpo.epsilon == 0.2
    assert cfg.grpo.loss_type == "dapo" and cfg.grpo.beta == 0.0 and cfg.grpo.scale_rewards == "group"
    assert _load(tmp_path, "ppo", {}).ppo.updates_per_rollout() == 4 * 32 // 8


def test_reward_functions():
    completions = ["19", " 19 ", "18", "19 and more", "2 5 9", "1,234"]
    answers = ["19", "19", "19", "19", "2 5 9", "1,234"]
    tasks = ["arithmetic"] * 4 + ["sorting", "formatting"]
    assert exact_answer([""] * 6, completions, answers) == [1, 1, 0, 0, 1, 1]
    assert format_reward([""] * 6, completions, task=tasks) == [1, 1, 1, 0, 1, 1]
    assert length_reward([""], ["123"], ["12"]) == [0.5]
    assert length_reward([""], ["12345"], ["12"]) == [0.0]
    # conversational completions (TRL's layout) and extra keyword arguments are accepted
    assert exact_answer([""], [[{"role": "assistant", "content": "7"}]], ["7"], completion_ids=[[1]]) == [1.0]
    assert load_reward_function("lmhpc.rl.rewards:exact_answer") is exact_answer
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        score([("f", lambda prompts, completions, **_: [1.0])], ["a", "b"], ["x", "y"], {})
    with pytest.raises(ValueError, match="not a number"):
        score([("f", lambda prompts, completions, **_: ["high", 1])], ["a", "b"], ["x", "y"], {})
    assert score([("f", lambda prompts, completions, **_: [None, 2])], ["a", "b"], ["x", "y"], {})[0][1] == 2.0


def test_generated_tasks_are_seeded_and_right():
    a = generate(["arithmetic", "sorting", "formatting"], 60, seed=3)
    assert a == generate(["arithmetic", "sorting", "formatting"], 60, seed=3)
    assert a != generate(["arithmetic", "sorting", "formatting"], 60, seed=4)
    for r in a:
        assert ANSWER_FORMATS[r["task"]].fullmatch(r["answer"]), r
        if r["task"] == "arithmetic":
            assert eval(r["prompt"][:-1]) == int(r["answer"])  # noqa: S307 (our own generated text)
        elif r["task"] == "sorting":
            assert sorted(map(int, r["prompt"][5:-1].split())) == list(map(int, r["answer"].split()))
        else:
            assert int(r["answer"].replace(",", "")) == int(r["prompt"].split()[1][:-1])
    with pytest.raises(ValueError, match="poetry"):
        generate(["poetry"], 3, 0)


def test_bad_records_are_counted_and_quarantined(tmp_path):
    from lmhpc.data.quarantine import Quarantine

    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(["[1, 2]", json.dumps({"prompt": "1+1=", "answer": "2"}), "oops",
                               json.dumps({"id": "e", "prompt": "2+2=", "answer": ""}), ""]) + "\n")
    counts: dict[str, int] = {}
    with Quarantine(tmp_path / "q.jsonl") as q:
        records = list(read_records(path, q, counts))
        kept, bad = check_records(records, q, len, 10)
    assert counts == {"not_json": 2} and bad == {"empty_answer": 1}
    assert [r["id"] for r in kept] == ["t-2"] and kept[0]["task"] == "custom"
    lines = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in lines] == ["not_json", "not_json", "empty_answer"]


def test_ppo_reads_the_reward_stage_when_the_run_chains_it(tmp_path):
    from lmhpc.config import build_root
    from lmhpc.stages import STAGES

    if "reward" not in STAGES:
        pytest.skip("no reward stage registered")
    cfg = build_root({"run": {"name": "r", "runs_dir": str(tmp_path), "stages": ["pretrain", "reward", "ppo"]}})
    assert STAGES["ppo"].reads_for(cfg) == ("pretrain", "reward")
    cfg.ppo.reward_model = str(tmp_path)
    assert STAGES["ppo"].reads_for(cfg) == ("pretrain",)
    cfg.ppo.init_from = str(tmp_path)
    assert STAGES["ppo"].reads_for(cfg) == ()
    alone = build_root({"run": {"name": "r", "runs_dir": str(tmp_path), "stages": ["sft", "grpo"]}})
    assert STAGES["grpo"].reads_for(alone) == ("sft",)
