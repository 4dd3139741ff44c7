"""Perplexity of models whose next-token distribution is known; documents from text files and .bin/.idx."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmhpc.data.quarantine import Quarantine
from lmhpc.evaluate.config import PerplexityConfig, TextSet
from lmhpc.evaluate.perplexity import Document, score_documents
from lmhpc.evaluate.scoring import Scorer
from lmhpc.evaluate.texts import prefix_documents, text_set_documents
from lmhpc.exchange.tokenizer import load_tokenizer
from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import Transformer


def fixed_distribution_model(log_p: torch.Tensor, max_seq_len: int = 16) -> Transformer:
    """A model that predicts the distribution ``softmax(log_p)`` after every token: every embedding is the same
    vector, the residual branches are zero, and the output layer turns the normed vector into ``log_p``."""
    vocab = log_p.numel()
    model = Transformer(ModelArgs(vocab_size=vocab, dim=8, n_layers=2, n_heads=2, max_seq_len=max_seq_len)).eval()
    with torch.no_grad():
        model.tok_embeddings.weight.fill_(1.0)  # RMS norm of all-ones is all-ones
        for layer in model.layers.values():
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.output.weight.zero_()
        model.output.weight[:, 0] = log_p
    return model


def test_perplexity_of_a_known_distribution_over_many_windows():
    rng = np.random.default_rng(0)
    p = torch.tensor(rng.dirichlet(np.ones(12)), dtype=torch.float32)
    model = fixed_distribution_model(p.log(), max_seq_len=16)
    docs = [Document("a" if i % 2 else "b", rng.integers(0, 12, size=int(n)).tolist(), nbytes=int(n) * 3)
            for i, n in enumerate([5, 40, 16, 17, 33])]  # shorter, longer and exactly one window
    tallies, skipped = score_documents(Scorer(model, torch.device("cpu"), 16), docs, prefix_token=0, window=16)
    tokens = [t for d in docs for t in d.tokens]
    nll = -float(sum(math.log(p[t]) for t in tokens))
    total = tallies["all"].summary()
    assert total["tokens"] == len(tokens) and total["docs"] == 5 and skipped == {"empty_document": 0}
    assert total["loss"] == pytest.approx(nll / len(tokens), rel=1e-5)
    assert total["perplexity"] == pytest.approx(math.exp(nll / len(tokens)), rel=1e-5)
    assert total["bits_per_byte"] == pytest.approx(nll / (3 * len(tokens) * math.log(2)), rel=1e-5)
    a_tokens = [t for d in docs if d.source == "a" for t in d.tokens]
    a_nll = -float(sum(math.log(p[t]) for t in a_tokens))
    assert tallies["a"].summary()["loss"] == pytest.approx(a_nll / len(a_tokens), rel=1e-5)
    assert total["loss_stderr"] > 0


def test_uniform_model_has_perplexity_vocab_size():
    model = fixed_distribution_model(torch.zeros(20))
    docs = [Document("x", list(range(20)) * 3, nbytes=60), Document("x", [], nbytes=0)]
    tallies, skipped = score_documents(Scorer(model, torch.device("cpu"), 16), docs, prefix_token=1, window=16)
    summary = tallies["x"].summary()
    assert summary["perplexity"] == pytest.approx(20.0, rel=1e-5)
    assert summary["loss_stderr"] is None  # one document: no standard error
    assert skipped == {"empty_document": 1}


def test_text_sets_count_bytes_and_split_sources(tmp_path, tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "one.txt").write_text("The quick brown fox — café.\n")
    rows = [{"text": "seven tired wizards", "source": "web"}, {"text": "brew strong coffee", "source": "books"},
            {"text": "", "source": "web"}, "not json"]
    (tmp_path / "mixed.jsonl").write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    cfg = PerplexityConfig(max_docs=10)
    with Quarantine(tmp_path / "q.jsonl") as q:
        txt = text_set_documents(TextSet(path="notes/*.txt"), lambda p: tmp_path / p, tokenizer, q, cfg)
        mixed = text_set_documents(TextSet(path="mixed.jsonl"), lambda p: tmp_path / p, tokenizer, q, cfg)
        assert dict(q.counts) == {"invalid_json": 1}  # the malformed line is quarantined
    assert [(d.source, d.nbytes) for d in txt] == [("notes", len("The quick brown fox — café.\n".encode()))]
    assert txt[0].tokens == tokenizer.encode("The quick brown fox — café.\n")
    assert sorted((d.source, len(d.tokens) > 0) for d in mixed) == [("books", True), ("web", False), ("web", True)]
    capped = text_set_documents(TextSet(path="mixed.jsonl", source="all"), lambda p: tmp_path / p, tokenizer,
                                Quarantine(tmp_path / "q2.jsonl"), PerplexityConfig(max_docs=1))
    assert len(capped) == 1


def test_prefix_documents_drop_the_end_of_document_token(tmp_path, tokenizer_dir):
    from lmhpc.train.data import write_indexed_dataset

    tokenizer = load_tokenizer(tokenizer_dir)
    texts = ["seven tired wizards quietly brew", "cold grey seas"]
    docs = [np.array(tokenizer.encode(t) + [tokenizer.eos_id]) for t in texts]
    prefix = write_indexed_dataset(tmp_path / "part", docs, tokenizer.vocab_size)
    got = prefix_documents(prefix, tokenizer, PerplexityConfig())
    assert [d.tokens for d in got] == [tokenizer.encode(t) for t in texts]
    assert [d.nbytes for d in got] == [len(tokenizer.decode(tokenizer.encode(t)).encode()) for t in texts]
    assert got[0].source == "part"
    bad = write_indexed_dataset(tmp_path / "other", [np.array([5, tokenizer.vocab_size + 7])], 70000)
    with pytest.raises(ValueError, match="outside the tokenizer's vocabulary"):
        prefix_documents(bad, tokenizer, PerplexityConfig())
