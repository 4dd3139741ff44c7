"""Preference config errors name their key before anything runs; pair tokenization (chat template, end token,
response mask); the reward model's folder round trip; the length-normalised losses."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from lmhpc.config import ConfigError, load_config
from lmhpc.preference.data import collate_pairs, end_token, load_pairs, tokenize_record
from lmhpc.preference.losses import dpo_losses
from lmhpc.preference.reward_model import RewardModel, load_reward_model, save_reward_model
from lmhpc.stages import STAGES
from tests.preference.conftest import PAIRS, tiny_model


def _load(tmp_path, stages, **sections):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"run": {"name": "t", "runs_dir": str(tmp_path / "runs"), "stages": stages},
                                    "wandb": {"mode": "disabled"}, **sections}))
    return load_config(path)


@pytest.mark.parametrize("stages,sections,key", [
    (["reference", "dpo"], {"dpo": {"data": ["x"], "init_from": "m", "loss_type": "kto"}}, "dpo.loss_type"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"], "init_from": "m", "beta": 0}}, "dpo.beta"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"], "init_from": "m", "label_smoothing": 0.1}},
     "dpo.label_smoothing"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"], "init_from": "m", "loss_type": "robust",
                                    "label_smoothing": 0.5}}, "dpo.label_smoothing"),
    (["reference", "dpo"], {"dpo": {"data": ["nothing/*.jsonl"], "init_from": "m"}}, "dpo.data[0]"),
    (["reference", "dpo"], {"dpo": {"init_from": "m"}}, "dpo.data"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"], "init_from": "missing"}}, "dpo.init_from"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"]}}, "dpo.init_from"),
    (["dpo"], {"dpo": {"data": ["DATA"], "init_from": "m"}}, "run.stages"),
    (["reference", "dpo"], {"dpo": {"data": ["DATA"], "init_from": "m", "train": {"global_batch_size": 6,
                                                                                   "micro_batch_size": 4}}},
     "dpo.train.global_batch_size"),
    (["reference", "dpo"], {"reference": {"batch_size": 0}, "dpo": {"data": ["DATA"], "init_from": "m"}},
     "reference.batch_size"),
    (["reward"], {"reward": {"data": ["DATA"], "init_from": "m", "center_rewards_coefficient": -1}},
     "reward.center_rewards_coefficient"),
    (["reward"], {"reward": {"init_from": "m"}}, "reward.data"),
    (["reward"], {"reward": {"data": ["DATA"], "init_from": "m", "lora": {"rank": 2, "targets": ["nope"]}}},
     "reward.lora.targets"),
])
def test_config_errors_name_the_key(tmp_path, stages, sections, key):
    (tmp_path / "m").mkdir()
    text = json.dumps(sections).replace("DATA", str(PAIRS))
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, stages, **json.loads(text))
    assert err.value.key == key, str(err.value)


def test_reads_follow_the_run(tmp_path):
    (tmp_path / "m").mkdir()
    cfg = _load(tmp_path, ["pretrain", "sft", "reference", "dpo", "reward"],
                sft={"data": [str(PAIRS)]}, dpo={"data": [str(PAIRS)]},
                reward={"data": [str(PAIRS)], "init_from": str(tmp_path / "m")})
    assert STAGES["dpo"].reads_for(cfg) == ("sft", "reference")
    assert STAGES["reference"].reads_for(cfg) == ("sft",)
    assert STAGES["reward"].reads_for(cfg) == ()


def test_pair_tokens_response_mask_and_end_token(tokenizer, tmp_path):
    record = {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
              "chosen": "4.", "rejected": "5."}
    prompt, chosen, rejected = tokenize_record(record, tokenizer, end_token(tokenizer))
    text = tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    assert chosen[-1] == rejected[-1] == tokenizer.token_id("<|im_end|>")
    assert tokenizer.decode(chosen[:-1]) == "4."
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "prompt": "plain", "margin": 2}) + "\n")
    from lmhpc.data.quarantine import Quarantine

    with Quarantine(tmp_path / "q.jsonl") as q:
        data = load_pairs([path], tokenizer, 128, q)
    assert [p.margin for p in data.pairs] == [None, 2.0]
    assert tokenizer.decode(list(data.pairs[1].prompt_ids)).startswith("<|im_start|>user\nplain")
    b = collate_pairs(data.pairs, pad_id=0)
    assert b.input_ids.shape[0] == 4  # [chosen; chosen; rejected; rejected]
    for row, (p, resp) in enumerate([(data.pairs[0], "c"), (data.pairs[1], "c"), (data.pairs[0], "r"),
                                     (data.pairs[1], "r")]):
        ids = p.chosen_ids if resp == "c" else p.rejected_ids
        assert b.response_mask[row].nonzero().squeeze(-1).tolist() == list(range(len(p.prompt_ids),
                                                                                   len(p.prompt_ids) + len(ids)))
        assert b.lengths[row] == len(p.prompt_ids) + len(ids)


def test_length_normalised_losses_use_per_token_ratios():
    pc, pr = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -18.0])
    rc, rr = torch.tensor([-11.0, -19.0]), torch.tensor([-11.0, -19.0])
    tc, tr = torch.tensor([2, 4]), torch.tensor([4, 2])
    loss, _, _ = dpo_losses(pc, pr, rc, rr, beta=0.5, length_normalize=True, chosen_tokens=tc, rejected_tokens=tr)
    delta = (pc - rc) / tc - (pr - rr) / tr
    assert torch.allclose(loss, -torch.nn.functional.logsigmoid(0.5 * delta))
    plain, _, _ = dpo_losses(pc, pr, rc, rr, beta=0.5)
    assert not torch.allclose(plain, loss)
    with pytest.raises(ValueError, match="token counts"):
        dpo_losses(pc, pr, rc, rr, length_normalize=True)


def test_reward_model_folder_round_trip(tmp_path, tokenizer_dir):
    from lmhpc.exchange.weights import read_tokenizer_files

    rm = RewardModel.from_policy(tiny_model(400, seed=1, tie_embeddings=True), head_seed=3)
    save_reward_model(rm, tmp_path / "rm", read_tokenizer_files(tokenizer_dir), {"note": "test"})
    back = load_reward_model(tmp_path / "rm")
    tokens = torch.randint(0, 400, (3, 20))
    lengths = torch.tensor([20, 7, 1])
    assert torch.equal(back.score(tokens, lengths), rm.score(tokens, lengths))
    # padding after a row's length is never read
    padded = tokens.clone()
    padded[1, 7:] = 0
    assert torch.equal(back.score(padded, lengths), rm.score(tokens, lengths))
    with pytest.raises(FileNotFoundError, match="not a reward model"):
        load_reward_model(tmp_path)
