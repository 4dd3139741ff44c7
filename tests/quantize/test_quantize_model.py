"""Whole-model RTN and GPTQ on a tiny Transformer: bad input fails first, GPTQ's logits are closer."""

from __future__ import annotations

import pytest
import torch

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.model import gptq_model, rtn_model


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = {"vocab_size": 64, "dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 32, "init_std": 0.1,
            "embedding_init_std": 1.0}
    return Transformer(ModelArgs(**{**base, **kw})).eval()


def test_gptq_model_logits_are_closer_than_rtn():
    g = torch.Generator().manual_seed(1)
    calibration = torch.randint(0, 64, (16, 32), generator=g)
    evaluation = torch.randint(0, 64, (8, 32), generator=g)
    ref = tiny()
    with torch.no_grad():
        want = ref(evaluation)
    rtn, gptq = tiny(), tiny()
    q_rtn = rtn_model(rtn, bits=3, group_size=32)
    q_gptq = gptq_model(gptq, calibration, bits=3, group_size=32)
    assert set(q_rtn) == set(q_gptq) and "layers.1.feed_forward.w2.weight" in q_gptq
    with torch.no_grad():
        err_rtn = float((rtn(evaluation) - want).norm())
        err_gptq = float((gptq(evaluation) - want).norm())
    assert 0 < err_gptq < 0.9 * err_rtn, (err_gptq, err_rtn)
    assert torch.equal(gptq.tok_embeddings.weight, ref.tok_embeddings.weight)


def test_bad_input_fails_before_work_naming_it():
    model = tiny()
    before = model.layers["0"].attention.wq.weight.clone()
    with pytest.raises(ValueError, match="group_size=48"):
        gptq_model(model, torch.zeros(2, 8, dtype=torch.long), bits=4, group_size=48)
    with pytest.raises(ValueError, match="bits=5"):
        rtn_model(model, bits=5)
    with pytest.raises(ValueError, match="calibration"):
        gptq_model(model, torch.zeros(0, 8, dtype=torch.long), bits=4, group_size=32)
    with pytest.raises(ValueError, match="model.layers.0"):
        rtn_model(tiny(layer_pattern="M"), bits=4, group_size=32)
    assert torch.equal(model.layers["0"].attention.wq.weight, before)
