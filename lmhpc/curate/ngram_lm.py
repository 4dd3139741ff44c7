"""A word n-gram language model for perplexity filtering: trained here, stored as an ARPA file.

Training uses interpolated Kneser-Ney smoothing (one absolute discount per order) on a reference
corpus (one sentence/line per line of text) and writes a standard ARPA file, the format KenLM reads.
Scoring uses KenLM when ``kenlm`` is importable and the file is a KenLM model; otherwise the ARPA
file is read and scored here with the usual back-off rule. Perplexity follows CCNet:
``10 ** (-sum(log10 p) / sum(len(line) + 1))`` over the lines of a document.

Build a model::

    python -m lmhpc.curate.ngram_lm train --order 3 --out ref.arpa reference/*.txt good.jsonl
    python -m lmhpc.curate.ngram_lm score ref.arpa some/file.jsonl.zst
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

from lmhpc.fsutil import atomic_open

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_TOKEN = re.compile(r"[^\W_]+")
_DIGIT = re.compile(r"\d")
_UNSEEN_LOGPROB = -99.0


def normalize_tokens(line: str) -> list[str]:
    """The model's tokens of one line: lower-cased words, digits replaced by 0, punctuation dropped."""
    return _TOKEN.findall(_DIGIT.sub("0", line.lower()))


def document_lines(text: str) -> list[list[str]]:
    """Token lists of the non-empty lines of ``text``."""
    return [toks for toks in (normalize_tokens(line) for line in text.split("\n")) if toks]


# --------------------------------------------------------------------------------------------
# training


def count_ngrams(sentences: Iterable[list[str]], order: int) -> list[Counter[tuple[str, ...]]]:
    """Counts of every n-gram of each order 1..``order`` in ``<s> tokens </s>`` sentences."""
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    for tokens in sentences:
        padded = (BOS, *tokens, EOS)
        for n in range(1, order + 1):
            c = counts[n - 1]
            for i in range(len(padded) - n + 1):
                c[padded[i : i + n]] += 1
    return counts


def kneser_ney(raw: list[Counter[tuple[str, ...]]]) -> tuple[list[dict[tuple[str, ...], float]], list[dict]]:
    """Interpolated Kneser-Ney: (log10 probabilities, log10 back-off weights) per order."""
    order = len(raw)
    # lower orders count the distinct words before an n-gram (continuation counts); n-grams that start
    # with <s> have nothing before them and keep their raw counts
    counts: list[Counter[tuple[str, ...]]] = [Counter() for _ in range(order)]
    counts[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        cont: Counter[tuple[str, ...]] = Counter()
        for gram in raw[n]:
            cont[gram[1:]] += 1
        for gram, c in raw[n - 1].items():
            counts[n - 1][gram] = c if gram[0] == BOS else cont.get(gram, c)
    discounts = []
    for c in counts:
        n1 = sum(1 for v in c.values() if v == 1)
        n2 = sum(1 for v in c.values() if v == 2)
        discounts.append(n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5)
    vocab = [g[0] for g in counts[0] if g[0] != BOS]
    probs: list[dict[tuple[str, ...], float]] = []
    backoffs: list[dict[tuple[str, ...], float]] = [dict() for _ in range(order)]
    # unigrams, interpolated with a uniform distribution over the vocabulary and <unk>
    d = discounts[0]
    total = sum(v for g, v in counts[0].items() if g[0] != BOS)
    gamma = d * len(vocab) / total if total else 1.0
    uniform = 1.0 / (len(vocab) + 1)
    p1 = {(w,): max(counts[0][(w,)] - d, 0) / total + gamma * uniform for w in vocab}
    p1[(UNK,)] = gamma * uniform
    probs.append(p1)
    for n in range(2, order + 1):
        c = counts[n - 1]
        d = discounts[n - 1]
        ctx_total: dict[tuple[str, ...], int] = defaultdict(int)
        ctx_types: dict[tuple[str, ...], int] = defaultdict(int)
        for gram, v in c.items():
            ctx_total[gram[:-1]] += v
            ctx_types[gram[:-1]] += 1
        pn: dict[tuple[str, ...], float] = {}
        for gram, v in c.items():
            ctx = gram[:-1]
            g = d * ctx_types[ctx] / ctx_total[ctx]
            pn[gram] = max(v - d, 0) / ctx_total[ctx] + g * _lower_prob(gram[1:], probs, backoffs)
        for ctx in ctx_total:
            backoffs[n - 2][ctx] = d * ctx_types[ctx] / ctx_total[ctx]
        probs.append(pn)
    logp = [{g: math.log10(p) for g, p in pn.items()} for pn in probs]
    logb = [{g: math.log10(b) for g, b in bo.items() if b > 0} for bo in backoffs]
    return logp, logb


def _lower_prob(gram: tuple[str, ...], probs: list[dict], backoffs: list[dict]) -> float:
    """p(w | shorter history) by back-off over the orders already built."""
    n = len(gram)
    if n == 0:
        return 0.0
    p = probs[n - 1].get(gram)
    if p is not None:
        return p
    if n == 1:
        return probs[0][(UNK,)]
    return backoffs[n - 2].get(gram[:-1], 1.0) * _lower_prob(gram[1:], probs, backoffs)


def write_arpa(path: Path, logp: list[dict], logb: list[dict]) -> None:
    """Write the model as an ARPA file (sorted, so the same corpus gives the same bytes)."""
    order = len(logp)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\\data\\\n")
        sizes = [len(logp[0]) + 1] + [len(p) for p in logp[1:]]
        for n, size in enumerate(sizes, start=1):
            fh.write(f"ngram {n}={size}\n")
        for n in range(1, order + 1):
            fh.write(f"\n\\{n}-grams:\n")
            rows = sorted(logp[n - 1].items())
            if n == 1:
                rows = sorted([*rows, ((BOS,), _UNSEEN_LOGPROB)])
            for gram, lp in rows:
                line = f"{lp:.6f}\t{' '.join(gram)}"
                if n < order and gram in logb[n - 1]:
                    line += f"\t{logb[n - 1][gram]:.6f}"
                fh.write(line + "\n")
        fh.write("\n\\end\\\n")


def train(texts: Iterable[str], order: int, out: Path) -> dict[str, int]:
    """Train a model of ``order`` on the lines of ``texts``; write it to ``out`` (ARPA)."""
    if order < 1:
        raise ValueError("order must be >= 1")
    sentences = (toks for text in texts for toks in document_lines(text))
    raw = count_ngrams(sentences, order)
    if not raw[0]:
        raise ValueError("the reference corpus holds no words")
    logp, logb = kneser_ney(raw)
    write_arpa(out, logp, logb)
    return {f"{n + 1}-grams": len(p) for n, p in enumerate(logp)}


# --------------------------------------------------------------------------------------------
# scoring


class ArpaModel:
    """An ARPA back-off model scored in Python."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.logp: dict[tuple[str, ...], float] = {}
        self.logb: dict[tuple[str, ...], float] = {}
        self.order = 0
        opener = gzip.open if self.path.name.endswith(".gz") else open
        section = 0
        with opener(self.path, "rt", encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line or line.startswith("ngram ") or line == "\\data\\" or line == "\\end\\":
                    continue
                if line.startswith("\\") and line.endswith("-grams:"):
                    section = int(line[1:].split("-")[0])
                    self.order = max(self.order, section)
                    continue
                parts = line.split("\t") if "\t" in line else line.split()
                if section == 0 or len(parts) < 2:
                    raise ValueError(f"{self.path}: not an ARPA file (line {line[:80]!r})")
                gram = tuple(parts[1].split()) if "\t" in line else tuple(parts[1 : 1 + section])
                rest = parts[2:] if "\t" in line else parts[1 + section :]
                self.logp[gram] = float(parts[0])
                if rest:
                    self.logb[gram] = float(rest[0])
        if not self.order:
            raise ValueError(f"{self.path}: no n-grams found")
        self.unk = self.logp.get((UNK,), _UNSEEN_LOGPROB)

    def _logprob(self, history: tuple[str, ...], word: str) -> float:
        backoff = 0.0
        for start in range(len(history) + 1):
            gram = (*history[start:], word)
            lp = self.logp.get(gram)
            if lp is not None:
                return backoff + lp
            backoff += self.logb.get(history[start:], 0.0)
        return backoff + self.unk

    def score_sentence(self, tokens: list[str]) -> float:
        """log10 p(tokens, </s> | <s>)."""
        history: tuple[str, ...] = (BOS,)
        total = 0.0
        keep = self.order - 1
        for word in (*tokens, EOS):
            total += self._logprob(history[-keep:] if keep else (), word)
            history = (*history, word)[-max(keep, 1) :]
        return total


class KenlmModel:
    """A model scored by KenLM (``kenlm.Model``: ARPA or binary)."""

    def __init__(self, path: str | Path) -> None:
        import kenlm

        self.model = kenlm.Model(str(path))

    def score_sentence(self, tokens: list[str]) -> float:
        return float(self.model.score(" ".join(tokens), bos=True, eos=True))


def load_model(path: str | Path) -> ArpaModel | KenlmModel:
    """KenLM when importable (any KenLM model), else our own ARPA reader."""
    try:
        import kenlm  # noqa: F401
    except ImportError:
        return ArpaModel(path)
    return KenlmModel(path)


def perplexity(model: ArpaModel | KenlmModel, text: str) -> float:
    """CCNet perplexity of ``text``: ``10 ** (-sum(log10 p) / sum(len(line) + 1))``; inf with no words."""
    total_logp = 0.0
    total_len = 0
    for tokens in document_lines(text):
        total_logp += model.score_sentence(tokens)
        total_len += len(tokens) + 1
    return 10.0 ** (-total_logp / total_len) if total_len else math.inf


# --------------------------------------------------------------------------------------------
# command line


def iter_texts(paths: list[str], text_key: str = "text") -> Iterator[str]:
    """Texts of plain text files (the whole file) or of JSON-lines documents (``.jsonl``, ``.gz``, ``.zst``)."""
    from lmhpc.data.writers import open_compressed_reader

    for p in paths:
        path = Path(p)
        if ".jsonl" in path.name or path.suffix == ".json":
            with open_compressed_reader(path) as fh:
                for line in fh:
                    if line.strip():
                        value = json.loads(line).get(text_key)
                        if isinstance(value, str):
                            yield value
        else:
            with open_compressed_reader(path) as fh:
                yield fh.read().decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    """``train`` a model from reference files or ``score`` documents with one."""
    p = argparse.ArgumentParser(prog="python -m lmhpc.curate.ngram_lm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a Kneser-Ney n-gram model on reference text, write ARPA")
    t.add_argument("inputs", nargs="+", help="text files, or JSON-lines documents (.jsonl[.gz|.zst])")
    t.add_argument("--out", required=True)
    t.add_argument("--order", type=int, default=3)
    t.add_argument("--text-key", default="text")
    s = sub.add_parser("score", help="print the perplexity of each document of JSON-lines files")
    s.add_argument("model")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--text-key", default="text")
    args = p.parse_args(argv)
    if args.command == "train":
        sizes = train(iter_texts(args.inputs, args.text_key), args.order, Path(args.out))
        print(json.dumps({"model": args.out, **sizes}))
        return 0
    model = load_model(args.model)
    for text in iter_texts(args.inputs, args.text_key):
        print(f"{perplexity(model, text):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
