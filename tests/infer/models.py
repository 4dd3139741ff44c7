"""Models for the generation tests: tiny random ones, and a "bigram" model whose greedy continuation of
each token is chosen by the test."""

from __future__ import annotations

import torch

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer

VOCAB = 96


def tiny_args(**kw) -> ModelArgs:
    """A 2-layer model whose random logits are well apart (greedy choices are not near ties)."""
    base = {"vocab_size": VOCAB, "dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 64, "init_std": 0.1,
            "embedding_init_std": 1.0}
    return ModelArgs(**{**base, **kw})


def build(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(args).eval()


def bigram_model(successor: dict[int, int], vocab: int = VOCAB, default: int = 0) -> Transformer:
    """A transformer whose greedy next token after ``i`` is ``successor.get(i, default)``, whatever came before:
    one-hot embeddings, mixers and FFNs that add nothing, and an output row per successor."""
    dim = 128
    assert vocab <= dim
    model = Transformer(ModelArgs(vocab_size=vocab, dim=dim, n_layers=1, n_heads=4, max_seq_len=128))
    with torch.no_grad():
        model.tok_embeddings.weight.copy_(torch.eye(vocab, dim))
        block = model.layers["0"]
        block.attention.wo.weight.zero_()
        block.feed_forward.w2.weight.zero_()
        out = torch.zeros(vocab, dim)
        for i in range(vocab):
            out[successor.get(i, default), i] = 1.0
        model.output.weight.copy_(out)
    return model.eval()
