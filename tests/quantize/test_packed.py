"""The packed safetensors format: load(save(q)) gives the in-memory quantized model's logits exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer
from lmhpc.quantize.model import gptq_model, rtn_model
from lmhpc.quantize.packed import load_quantized, pack_codes, save_quantized, unpack_codes


def tiny(**kw) -> Transformer:
    torch.manual_seed(0)
    base = {"vocab_size": 64, "dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 32, "init_std": 0.1,
            "embedding_init_std": 1.0}
    return Transformer(ModelArgs(**{**base, **kw})).eval()


@pytest.mark.parametrize("method,bits,group,tie", [("rtn", 8, None, False), ("rtn", 4, 32, True),
                                                   ("gptq", 3, 16, False)])
def test_round_trip_gives_identical_logits(tmp_path, method, bits, group, tie):
    model = tiny(tie_embeddings=tie)
    if method == "gptq":
        quantized = gptq_model(model, torch.randint(0, 64, (4, 16)), bits=bits, group_size=group)
    else:
        quantized = rtn_model(model, bits=bits, group_size=group)
    path = save_quantized(model, quantized, tmp_path / "model.safetensors", method)
    loaded = load_quantized(path)
    tokens = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        codes = f.get_tensor("layers.0.feed_forward.w1.weight.codes")
    assert (meta["method"], meta["bits"]) == (method, str(bits))
    width = model.layers["0"].feed_forward.w1.in_features
    assert codes.dtype == torch.uint8 and codes.shape[1] == (width if bits == 8 else width // 2)


def test_packing_is_two_codes_a_byte():
    codes = torch.tensor([[1, 15, 7, 0]], dtype=torch.uint8)
    packed = pack_codes(codes, 4)
    assert packed.tolist() == [[0xF1, 0x07]]
    assert torch.equal(unpack_codes(packed, 4), codes)


def test_not_a_packed_file_fails(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="format"):
        load_quantized(tmp_path / "plain.safetensors")
