"""Our GRPO advantages, rewards, KL, loss and metrics equal TRL 1.16 GRPOTrainer's on the same completions.

TRL runs on the Hugging Face export of our tiny policy; its generation step is replaced by fixed completions
(so both sides score the same tokens), and the reference model is the export of the starting weights."""

from __future__ import annotations

import pytest
import torch

from lmhpc.exchange.hf import write_hf
from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files
from lmhpc.rl.grpo import GRPOSettings, grpo_micro_loss, reward_metrics, score_group_batch, sequence_logps_no_grad
from lmhpc.rl.rewards import exact_answer, format_reward
from lmhpc.rl.rollout import build_rollout
from tests.helpers import import_peer
from tests.rl.conftest import tiny_policy

G = 4
RECORDS = [{"prompt": "12+7=", "answer": "19", "task": "arithmetic"},
           {"prompt": "sort 5 2 9:", "answer": "2 5 9", "task": "sorting"}]
TEMPERATURE = 0.7


def _completions(tok) -> list[list[int]]:
    """Two groups of four: right, wrong, ill-formed, cut at the length limit (no EOS)."""
    ids = lambda text: [tok.token_id(ch) if ch != " " else tok.token_id("▁") for ch in text]  # noqa: E731
    eos = tok.eos_id
    return [ids("19") + [eos], ids("18") + [eos], ids("1+") + [eos], ids("1999999"),
            ids("2 5 9") + [eos], ids("2 9 5") + [eos], ids("29") + [eos], ids("5 5 5 5 5")]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_equals_trl(tmp_path, char_tokenizer, char_tokenizer_dir, loss_type):
    trl = import_peer("trl")
    datasets = import_peer("datasets")
    transformers = import_peer("transformers")

    vocab = char_tokenizer.vocab_size
    reference = tiny_policy(vocab, seed=3, init_std=0.2)
    policy = tiny_policy(vocab, seed=3, init_std=0.2)
    with torch.no_grad():  # the policy has moved away from the reference
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    old = tiny_policy(vocab, seed=3, init_std=0.2)  # the weights that sampled: between the two
    with torch.no_grad():
        for p, q in zip(old.parameters(), policy.parameters()):
            p.copy_(0.5 * p + 0.5 * q)
    files = read_tokenizer_files(char_tokenizer_dir)
    hf_dirs = {}
    for name, model in (("policy", policy), ("reference", reference), ("old", old)):
        hf_dirs[name] = write_hf(ModelWeights(model_state(model), model.args, files), tmp_path / name)

    hf_policy = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["policy"], dtype=torch.float32)
    hf_policy.config._name_or_path = str(hf_dirs["reference"])  # TRL builds its reference from this path
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dirs["policy"])
    dataset = datasets.Dataset.from_list(RECORDS)
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(RECORDS) * G,
                          num_generations=G, max_completion_length=8, beta=0.04, epsilon=0.2, epsilon_high=0.28,
                          loss_type=loss_type, temperature=TEMPERATURE, report_to="none", use_cpu=True, bf16=False,
                          logging_steps=1, seed=0, disable_dropout=True)
    trainer = trl.GRPOTrainer(model=hf_policy, reward_funcs=[exact_answer, format_reward], args=args,
                              train_dataset=dataset, processing_class=hf_tok)
    trainer.reward_weights = torch.tensor([1.0, 0.5])
    fixed = _completions(char_tokenizer)
    trainer._generate_single_turn = lambda prompt_ids, *a, **k: ([list(c) for c in fixed], None)
    inputs = [dict(r) for r in RECORDS for _ in range(G)]
    trainer.model.train()
    out = trainer._generate_and_score_completions(inputs)
    trl_reward_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    with torch.no_grad():  # old log-probs from the "old" weights make the ratios differ from 1
        hf_old = transformers.AutoModelForCausalLM.from_pretrained(hf_dirs["old"], dtype=torch.float32)
        trl_utils = __import__("trl.trainer.utils", fromlist=["add_fused_lm_head"])
        trl_utils.add_fused_lm_head(hf_old, temperature=TEMPERATURE)
        out["old_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
            hf_old, torch.cat([out["prompt_ids"], out["completion_ids"]], 1),
            torch.cat([out["prompt_mask"], out["completion_mask"]], 1), out["completion_ids"].size(1))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    trainer._metrics["train"].clear()
    trl_loss = trainer._compute_loss(trainer.model, out)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # ours, on the very same prompt tokens (TRL's, without their left padding) and completions
    prompt_ids = [row[mask.bool()].tolist() for row, mask in zip(out["prompt_ids"], out["prompt_mask"])]
    texts = [char_tokenizer.decode([t for t in c if t != char_tokenizer.eos_id]) for c in fixed]
    rollout = build_rollout(prompt_ids, fixed, char_tokenizer.pad_id, texts,
                            ["eos" if c[-1] == char_tokenizer.eos_id else "length" for c in fixed])
    fields = {"answer": [r["answer"] for r in inputs], "task": [r["task"] for r in inputs]}
    batch = score_group_batch(rollout, [r["prompt"] for r in inputs], fields,
                              [("exact_answer", exact_answer), ("format_reward", format_reward)], [1.0, 0.5], G,
                              "group")
    assert torch.allclose(batch.advantages, out["advantages"], atol=1e-6), (batch.advantages, out["advantages"])
    assert batch.advantages.abs().sum() > 0
    batch.old_logps = sequence_logps_no_grad(old, rollout, TEMPERATURE)
    batch.ref_logps = sequence_logps_no_grad(reference, rollout, TEMPERATURE)
    settings = GRPOSettings(0.2, 0.28, 0.04, loss_type, 8, TEMPERATURE)
    policy.train()
    loss, stats = grpo_micro_loss(policy, batch, settings, rollout.completion_mask.sum().item(), 1)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-7)
    assert stats["kl_mean"] == pytest.approx(trl_metrics["kl"], rel=1e-4)
    assert stats["kl_mean"] > 1e-4
    assert stats["entropy_sum"] / stats["tokens"] == pytest.approx(trl_metrics["entropy"], rel=1e-5)
    for key, value in stats["clip"].items():
        assert value == pytest.approx(trl_metrics[key], abs=1e-6), key
    assert sum(stats["clip"][k] for k in ("clip_ratio/low_mean", "clip_ratio/high_mean")) > 0
    ours = reward_metrics(batch, ["exact_answer", "format_reward"])
    for key in ("reward", "reward_std", "frac_reward_zero_std", "rewards/exact_answer/mean",
                "rewards/exact_answer/std", "rewards/format_reward/mean", "rewards/format_reward/std",
                "completions/mean_length", "completions/max_length", "completions/clipped_ratio"):
        assert ours[key] == pytest.approx(trl_reward_metrics[key], abs=1e-6), key
    # gradients agree too: one parameter's gradient of the loss
    loss.backward()
    trl_loss.backward()
    ours_grad = policy.output.weight.grad
    theirs = dict(hf_policy.named_parameters())["lm_head.weight"].grad
    torch.testing.assert_close(ours_grad, theirs, rtol=1e-3, atol=1e-5 * theirs.abs().max().item())
    assert ours["reward"] > 0
