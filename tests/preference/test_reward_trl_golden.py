"""Our reward model (scalar head on the last token) and Bradley-Terry loss equal TRL 1.16's RewardTrainer on a
``LlamaForSequenceClassification`` holding the same weights: loss and metrics at step 1 and after AdamW steps."""

from __future__ import annotations

import pytest
import torch

from lmhpc.preference.data import collate_pairs, pad_id_of
from lmhpc.preference.losses import center_penalty, reward_losses, reward_metric_values
from lmhpc.preference.reward_model import RewardModel
from tests.preference.conftest import tiny_model, tiny_weights
from tests.preference.trl_runs import REWARD_METRICS, reward_run

STEPS, BATCH, LR = 3, 4, 1e-3


def our_reward_run(rm: RewardModel, pairs, pad_id, center=None, steps=STEPS, batch=BATCH):
    opt = torch.optim.AdamW(rm.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, metrics = [], []
    for i in range(steps):
        b = collate_pairs(pairs[i * batch:(i + 1) * batch], pad_id)
        rewards = rm(b.input_ids, b.lengths)
        rc, rr = rewards.chunk(2)
        loss = reward_losses(rc, rr).mean()
        if center is not None:
            loss = loss + center * center_penalty(rc, rr).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        metrics.append(reward_metric_values(rc, rr))
    return losses, metrics


@pytest.mark.parametrize("center", [None, 0.01], ids=["plain", "center_rewards"])
def test_reward_model_equals_trl(tmp_path, tokenizer, tokenizer_dir, pairs, center):
    policy = tiny_model(tokenizer.vocab_size, seed=4)
    rm = RewardModel.from_policy(policy, head_seed=7)
    kept = pairs.pairs[:STEPS * BATCH]
    golden = reward_run(tiny_weights(policy, tokenizer_dir), rm.score_head.weight.detach().clone(), kept, tmp_path,
                        steps=STEPS, batch=BATCH, lr=LR, center_rewards_coefficient=center)
    losses, metrics = our_reward_run(rm, kept, pad_id_of(tokenizer), center)
    assert losses[-1] != pytest.approx(losses[0], rel=1e-3)
    for step in range(STEPS):
        assert losses[step] == pytest.approx(golden["losses"][step], rel=1e-5), step
        scale = max(abs(golden["metrics"][step]["min_reward"]), abs(golden["metrics"][step]["max_reward"]))
        for key in REWARD_METRICS:
            assert metrics[step][key] == pytest.approx(golden["metrics"][step][key], rel=1e-5, abs=1e-5 * scale), \
                (step, key)
