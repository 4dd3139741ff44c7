"""Golden: lm-evaluation-harness's own Hugging Face model, on the Hugging Face export of the same weights,
scores HellaSwag, ARC-Easy and PIQA items exactly as our stage does (same acc and acc_norm)."""

from __future__ import annotations

import pytest
import torch

from lmhpc.evaluate.harness_tasks import write_local_tasks
from lmhpc.evaluate.multiple_choice import score_items
from lmhpc.evaluate.scoring import Scorer
from lmhpc.evaluate.tasks import TASKS
from lmhpc.exchange.tokenizer import load_tokenizer
from tests.evaluate.conftest import tiny_model

NAMES = ["hellaswag", "arc_easy", "piqa"]
LIMIT = 24


@pytest.mark.slow
def test_stage_scores_equal_the_harness_hf_model(tmp_path, tokenizer_dir, data_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from lmhpc.exchange.hf import write_hf
    from lmhpc.exchange.weights import ModelWeights, model_state, read_tokenizer_files

    tokenizer = load_tokenizer(tokenizer_dir)
    model = tiny_model(vocab_size=tokenizer.vocab_size, seed=11, max_seq_len=256)
    folder = write_hf(ModelWeights(model_state(model), model.args, read_tokenizer_files(tokenizer_dir)),
                      tmp_path / "hf")
    tasks = write_local_tasks(NAMES, data_dir, LIMIT, tmp_path / "tasks")
    hf = HFLM(pretrained=str(folder), batch_size=8, device="cpu", dtype="float32")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(model=hf, tasks=tasks, bootstrap_iters=0, log_samples=False, task_manager=manager)
    results = out["results"]
    scorer = Scorer(model, torch.device("cpu"), 256)
    for name in NAMES:
        items = [TASKS[name].to_item(d) for d in TASKS[name].items(data_dir)[:LIMIT]]
        ours = score_items(scorer, tokenizer, tokenizer.bos_id, items, name)
        assert len(ours.acc) == LIMIT and not ours.skipped
        assert out["n-samples"][name]["effective"] == LIMIT
        assert results[name]["acc,none"] == pytest.approx(sum(ours.acc) / LIMIT, abs=1e-6), name
        assert results[name]["acc_norm,none"] == pytest.approx(sum(ours.acc_norm) / LIMIT, abs=1e-6), name
