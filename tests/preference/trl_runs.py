"""Runs of TRL 1.16's DPOTrainer and RewardTrainer on the Hugging Face export of our tiny model, fed the same
token ids as our stages (a dataset already holding ``prompt_ids``/``chosen_ids``/``rejected_ids``), in a fixed
order, fp32 on CPU, constant learning rate: the golden numbers of the preference tests and the peer of
bench/align.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from lmhpc.exchange.hf import write_hf
from lmhpc.exchange.weights import ModelWeights
from lmhpc.preference.data import PreferencePair
from tests.helpers import import_peer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")
REWARD_METRICS = ("accuracy", "margin", "min_reward", "mean_reward", "max_reward")


def common_args(out: Path, steps: int, batch: int, lr: float, seed: int) -> dict[str, Any]:
    return {"output_dir": str(out), "per_device_train_batch_size": batch, "gradient_accumulation_steps": 1,
            "learning_rate": lr, "lr_scheduler_type": "constant", "warmup_steps": 0, "weight_decay": 0.0,
            "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "max_steps": steps,
            "logging_steps": 1, "save_strategy": "no", "report_to": [], "use_cpu": True, "bf16": False, "fp16": False,
            "gradient_checkpointing": False, "seed": seed, "data_seed": seed, "train_sampling_strategy": "sequential",
            "dataloader_num_workers": 0, "disable_tqdm": True, "remove_unused_columns": False}


def dpo_run(weights: ModelWeights, pairs: list[PreferencePair], folder: Path, *, steps: int, batch: int,
            lr: float, loss_type: str, beta: float, label_smoothing: float = 0.0, seed: int = 0,
            precompute_ref: bool = True) -> dict[str, Any]:
    """TRL's DPO on ``pairs`` in this order (step ``i`` takes pairs ``[i*batch, (i+1)*batch)``): per step its
    loss and logged metrics, and the trained model."""
    trl = import_peer("trl")
    transformers = import_peer("transformers")
    datasets = import_peer("datasets")

    hf = write_hf(weights, folder / "hf", overwrite=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    rows = [{"prompt_ids": list(p.prompt_ids), "chosen_ids": list(p.chosen_ids), "rejected_ids": list(p.rejected_ids)}
            for p in pairs[:steps * batch]]
    dataset = datasets.Dataset.from_list(rows)
    losses: list[float] = []

    class Trainer(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset  # already our token ids

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float(loss.detach()))
            return loss

    config = trl.DPOConfig(**common_args(folder / "trl", steps, batch, lr, seed), beta=beta, loss_type=[loss_type],
                           label_smoothing=label_smoothing, max_length=None, precompute_ref_log_probs=precompute_ref,
                           precompute_ref_batch_size=batch)
    trainer = Trainer(model=model, ref_model=ref, args=config, train_dataset=dataset, processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/chosen" in h]
    assert len(logs) == steps and len(losses) == steps, (len(logs), len(losses))
    return {"losses": losses, "metrics": [{k: h[k] for k in DPO_METRICS} for h in logs], "model": trainer.model}


def reward_run(weights: ModelWeights, head: torch.Tensor, pairs: list[PreferencePair], folder: Path, *, steps: int,
               batch: int, lr: float, seed: int = 0, center_rewards_coefficient: float | None = None
               ) -> dict[str, Any]:
    """TRL's RewardTrainer on ``pairs`` (prompt + response ids) in this order, from our backbone weights and
    score head ``head`` (1, dim): per step its loss and logged metrics."""
    trl = import_peer("trl")
    transformers = import_peer("transformers")
    datasets = import_peer("datasets")

    hf = write_hf(weights, folder / "hf", overwrite=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(hf, num_labels=1, dtype=torch.float32)
    with torch.no_grad():
        model.score.weight.copy_(head)
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    rows = [{"chosen_ids": list(p.prompt_ids + p.chosen_ids), "rejected_ids": list(p.prompt_ids + p.rejected_ids)}
            for p in pairs[:steps * batch]]
    losses: list[float] = []

    class Trainer(trl.RewardTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    config = trl.RewardConfig(**common_args(folder / "trl-rm", steps, batch, lr, seed), max_length=None,
                              center_rewards_coefficient=center_rewards_coefficient)
    trainer = Trainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "accuracy" in h]
    assert len(logs) == steps and len(losses) == steps, (len(logs), len(losses))
    return {"losses": losses, "metrics": [{k: h[k] for k in REWARD_METRICS} for h in logs], "model": trainer.model}
