"""The documents perplexity is measured on: held-out text files, Megatron ``.bin/.idx`` prefixes, LAMBADA.

Text is tokenized with the evaluated model's tokenizer (no BOS or EOS added: the rolling windows put the
prefix token in front). A prefix's documents are token ids already; they must come from the same
tokenizer, and their text (for bits per byte) is their decoding, less a trailing end-of-document token.
Each source stops at ``max_docs`` documents or once ``max_tokens`` tokens are collected.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from lmhpc.data.inputs import InputSpec
from lmhpc.data.quarantine import Quarantine
from lmhpc.data.readers import read_documents
from lmhpc.evaluate.benchdata import request_docs
from lmhpc.evaluate.config import PerplexityConfig, TextSet
from lmhpc.evaluate.perplexity import Document
from lmhpc.exchange.tokenizer import TextTokenizer


def make_document(source: str, text: str, tokenizer: TextTokenizer) -> Document:
    """A text's tokens, UTF-8 bytes and whitespace-separated words."""
    return Document(source, tokenizer.encode(text), len(text.encode("utf-8")), len(text.split()))


def _capped(docs: Iterable[Document], max_docs: int, max_tokens: int) -> list[Document]:
    out: list[Document] = []
    tokens = 0
    for doc in docs:
        if len(out) >= max_docs or tokens >= max_tokens:
            break
        out.append(doc)
        tokens += len(doc.tokens)
    return out


def text_set_documents(text_set: TextSet, resolve: Callable[[str], Path], tokenizer: TextTokenizer,
                       quarantine: Quarantine, cfg: PerplexityConfig) -> list[Document]:
    """Documents of one text set, capped per source. ``.txt`` files are one document each; other files are read
    like curate's inputs (bad records go to ``quarantine``)."""
    pattern = str(resolve(text_set.path))
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"evaluate.perplexity.texts: no file matches {pattern}")
    by_source: dict[str, list[Document]] = {}
    tokens: dict[str, int] = {}
    for path in files:
        if path.suffix == ".txt":
            source = text_set.source or path.parent.name
            texts = [(source, path.read_text(encoding="utf-8"))]
        else:
            spec = InputSpec(path=str(path), source=text_set.source, text_key=text_set.text_key)
            texts = ((d.source, d.text) for d in read_documents(path, spec, quarantine))
        for source, text in texts:
            docs = by_source.setdefault(source, [])
            if len(docs) >= cfg.max_docs or tokens.get(source, 0) >= cfg.max_tokens:
                continue
            doc = make_document(source, text, tokenizer)
            docs.append(doc)
            tokens[source] = tokens.get(source, 0) + len(doc.tokens)
    return [d for source in sorted(by_source) for d in by_source[source]]


def prefix_documents(prefix: str | Path, tokenizer: TextTokenizer, cfg: PerplexityConfig,
                     source: str | None = None) -> list[Document]:
    """The first documents of a Megatron ``.bin/.idx`` prefix (one sequence per document)."""
    from lmhpc.tokenizer.indexed import bin_path, idx_path, read_index

    index = read_index(idx_path(prefix))
    data = np.memmap(bin_path(prefix), dtype=index.dtype, mode="r")
    name = source or Path(prefix).name
    eod = tokenizer.eos_id

    def docs() -> Iterable[Document]:
        for n, start in zip(index.sequence_lengths, index.sequence_pointers):
            ids = [int(t) for t in data[start // index.dtype.itemsize:start // index.dtype.itemsize + n]]
            if ids and ids[-1] == eod:
                ids = ids[:-1]
            too_big = [t for t in ids if not 0 <= t < tokenizer.vocab_size]
            if too_big:
                raise ValueError(f"{prefix}: token id {too_big[0]} is outside the tokenizer's vocabulary "
                                 f"({tokenizer.vocab_size}): the prefix was not made with this tokenizer")
            text = tokenizer.decode(ids)
            yield Document(name, ids, len(text.encode("utf-8")), len(text.split()))

    return _capped(docs(), cfg.max_docs, cfg.max_tokens)


def lambada_documents(data_dir: Path, tokenizer: TextTokenizer, count: int, cfg: PerplexityConfig
                      ) -> list[Document]:
    """The first ``count`` LAMBADA passages (test split: context and final word, as one text)."""
    docs = []
    for doc in request_docs(data_dir, "lambada", "bpb_0shot"):
        if len(docs) >= count:
            break
        docs.append(make_document("lambada", doc["query"] + " " + doc["choices"][0], tokenizer))
    return _capped(docs, count, cfg.max_tokens)
