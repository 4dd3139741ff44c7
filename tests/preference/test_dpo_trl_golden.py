"""Our DPO losses and metrics equal TRL 1.16's DPOTrainer on the same tiny model (its Hugging Face export), the
same token ids and the same batch order: at step 1 (policy = reference) and after optimizer steps.

These tests drive the loss functions and the response scoring with a plain AdamW loop; the dpo stage's own loop
is compared with TRL in test_preference_stages.py."""

from __future__ import annotations

import math

import pytest
import torch

from lmhpc.preference.data import collate_pairs, pad_id_of
from lmhpc.preference.logps import batch_scores, split_pairs
from lmhpc.preference.losses import dpo_losses, dpo_metric_sums, dpo_metrics
from tests.preference.conftest import tiny_model, tiny_weights
from tests.preference.trl_runs import DPO_METRICS, dpo_run

STEPS, BATCH, LR, BETA = 3, 4, 1e-3, 0.1
CASES = [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)]


def our_run(model, pairs, pad_id, loss_type, label_smoothing, steps=STEPS, batch=BATCH):
    """A plain loop: reference log-probs from the frozen start, then AdamW (TRL's settings) on the policy."""
    ref = {}
    with torch.no_grad():
        for i in range(steps):
            b = collate_pairs(pairs[i * batch:(i + 1) * batch], pad_id)
            c, r = split_pairs(batch_scores(model, b, stats=False))
            ref[i] = (c.logps, r.logps)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    losses, metrics = [], []
    for i in range(steps):
        b = collate_pairs(pairs[i * batch:(i + 1) * batch], pad_id)
        c, r = split_pairs(batch_scores(model, b))
        per_pair, cr, rr = dpo_losses(c.logps, r.logps, *ref[i], loss_type=loss_type, beta=BETA,
                                      label_smoothing=label_smoothing, chosen_tokens=c.tokens,
                                      rejected_tokens=r.tokens)
        loss = per_pair.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        metrics.append(dpo_metrics({k: v.item() for k, v in dpo_metric_sums(c, r, cr, rr).items()}))
    return losses, metrics


@pytest.mark.parametrize("loss_type,label_smoothing", CASES, ids=[c[0] for c in CASES])
def test_dpo_equals_trl(tmp_path, tokenizer, tokenizer_dir, pairs, loss_type, label_smoothing):
    model = tiny_model(tokenizer.vocab_size, seed=3)
    weights = tiny_weights(model, tokenizer_dir)
    kept = pairs.pairs[:STEPS * BATCH]
    golden = dpo_run(weights, kept, tmp_path, steps=STEPS, batch=BATCH, lr=LR, loss_type=loss_type, beta=BETA,
                     label_smoothing=label_smoothing)
    losses, metrics = our_run(model, kept, pad_id_of(tokenizer), loss_type, label_smoothing)

    first = {"sigmoid": math.log(2), "ipo": (1 / (2 * BETA)) ** 2, "hinge": 1.0, "robust": math.log(2)}[loss_type]
    assert losses[0] == pytest.approx(first, rel=1e-6)  # policy = reference at step 1
    assert metrics[0]["rewards/margins"] == 0.0 and metrics[0]["rewards/accuracies"] == 0.0
    assert losses[-1] != pytest.approx(losses[0], rel=1e-3)  # the steps changed the policy
    for step in range(STEPS):
        assert_dpo_step_equal(losses[step], metrics[step], golden["losses"][step], golden["metrics"][step], step)


def assert_dpo_step_equal(loss, metrics, golden_loss, golden_metrics, step, beta=BETA):
    """Within 1e-5 relative. The rewards are β × differences of summed log-probs (~100 nats here), which float32
    resolves to ~1e-7 of the log-probs: they are held to 1e-5 of the log-probs they are made of."""
    assert loss == pytest.approx(golden_loss, rel=1e-5, abs=1e-7), step
    scale = beta * max(abs(golden_metrics["logps/chosen"]), abs(golden_metrics["logps/rejected"]))
    for key in DPO_METRICS:
        tol = 1e-5 * scale if key.startswith("rewards/") and key != "rewards/accuracies" else 1e-7
        assert metrics[key] == pytest.approx(golden_metrics[key], rel=1e-5, abs=tol), (step, key)
