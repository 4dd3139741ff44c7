"""A fastText quality classifier: train it on the user's good and bad examples, report held-out
precision and recall, and score documents with it.

    python -m lmhpc.curate.classifier train --good good/*.jsonl.zst --bad bad/*.txt --out quality.bin
    python -m lmhpc.curate.classifier score quality.bin docs.jsonl.zst

Inputs are JSON-lines documents (``.jsonl``, ``.gz``, ``.zst``; the ``text`` field) or plain text
files (one example per non-empty line). A fixed share of examples, chosen by a hash of the text, is
held out for the report, which is written beside the model (``<model>.report.json``). Training is
single-threaded and seeded, so the same examples give the same model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lmhpc.fsutil import atomic_path, write_json

GOOD_LABEL = "hq"
BAD_LABEL = "lq"
_WS = re.compile(r"\s+")


def fasttext_line(text: str) -> str:
    """One example as fastText wants it: a single line, whitespace collapsed."""
    return _WS.sub(" ", text).strip()


def iter_examples(paths: Iterable[str | Path], text_key: str = "text") -> Iterator[str]:
    """Example texts of JSON-lines files (one document each) or text files (one example a line)."""
    from lmhpc.data.writers import open_compressed_reader

    for p in paths:
        path = Path(p)
        with open_compressed_reader(path) as fh:
            for raw in fh:
                line = raw.decode("utf-8", errors="replace")
                if not line.strip():
                    continue
                if ".jsonl" in path.name:
                    value = json.loads(line).get(text_key)
                    if isinstance(value, str) and value.strip():
                        yield value
                else:
                    yield line


def is_held_out(text: str, fraction: float, seed: int) -> bool:
    """Deterministic held-out split by a hash of the example text."""
    digest = hashlib.blake2b(f"{seed}:{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def load_fasttext(path: str | Path) -> Any:
    """Load a fastText model (quietly)."""
    import fasttext

    fasttext.FastText.eprint = lambda *args, **kwargs: None  # silence the load-time warning
    return fasttext.load_model(str(path))


def predict_scores(model: Any, text: str) -> dict[str, float]:
    """Probability of every label (without the ``__label__`` prefix) for one text."""
    labels, probs = model.predict(fasttext_line(text), k=-1)
    return {label.removeprefix("__label__"): float(min(p, 1.0)) for label, p in zip(labels, probs)}


def train(
    good: list[str],
    bad: list[str],
    out: Path,
    holdout: float = 0.1,
    seed: int = 0,
    epoch: int = 10,
    lr: float = 0.5,
    word_ngrams: int = 2,
    dim: int = 64,
    min_count: int = 1,
    text_key: str = "text",
) -> dict[str, Any]:
    """Train on ``good``/``bad`` example files; write the model to ``out`` and return the held-out report."""
    import fasttext

    train_lines: list[str] = []
    test: list[tuple[str, str]] = []
    counts = {GOOD_LABEL: 0, BAD_LABEL: 0}
    for label, paths in ((GOOD_LABEL, good), (BAD_LABEL, bad)):
        for text in iter_examples(paths, text_key):
            line = fasttext_line(text)
            if not line:
                continue
            counts[label] += 1
            if is_held_out(line, holdout, seed):
                test.append((label, line))
            else:
                train_lines.append(f"__label__{label} {line}")
    if not all(counts.values()):
        raise ValueError(f"need good and bad examples, got {counts}")
    if not train_lines:
        raise ValueError("every example was held out; lower --holdout")
    fd, tmp = tempfile.mkstemp(prefix="fasttext-train-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(train_lines) + "\n")
        model = fasttext.train_supervised(input=tmp, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim,
                                          minCount=min_count, thread=1, seed=seed, verbose=0)
    finally:
        os.unlink(tmp)
    out = Path(out)
    with atomic_path(out) as tmp_model:
        model.save_model(str(tmp_model))
    report = {"model": str(out), "train_examples": len(train_lines), "held_out_examples": len(test),
              "examples": counts, **evaluate(model, test)}
    write_json(out.with_name(out.name + ".report.json"), report)
    return report


def evaluate(model: Any, examples: list[tuple[str, str]]) -> dict[str, Any]:
    """Precision, recall and F1 of each label on held-out ``(label, text)`` pairs, and accuracy."""
    if not examples:
        return {"accuracy": None, "labels": {}}
    predicted = [model.predict(text, k=1)[0][0].removeprefix("__label__") for _, text in examples]
    out: dict[str, Any] = {}
    for label in (GOOD_LABEL, BAD_LABEL):
        tp = sum(1 for (gold, _), p in zip(examples, predicted) if p == label and gold == label)
        fp = sum(1 for (gold, _), p in zip(examples, predicted) if p == label and gold != label)
        fn = sum(1 for (gold, _), p in zip(examples, predicted) if p != label and gold == label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                      "support": tp + fn}
    accuracy = sum(1 for (gold, _), p in zip(examples, predicted) if p == gold) / len(examples)
    return {"accuracy": round(accuracy, 4), "labels": out}


def main(argv: list[str] | None = None) -> int:
    """``train`` a classifier or ``score`` documents with one."""
    p = argparse.ArgumentParser(prog="python -m lmhpc.curate.classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a fastText good/bad classifier, report held-out precision/recall")
    t.add_argument("--good", nargs="+", required=True, help="files of good examples")
    t.add_argument("--bad", nargs="+", required=True, help="files of bad examples")
    t.add_argument("--out", required=True, help="model file to write (.bin)")
    t.add_argument("--holdout", type=float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--epoch", type=int, default=10)
    t.add_argument("--lr", type=float, default=0.5)
    t.add_argument("--word-ngrams", type=int, default=2)
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--text-key", default="text")
    s = sub.add_parser("score", help="print each document's label probabilities as JSON lines")
    s.add_argument("model")
    s.add_argument("inputs", nargs="+")
    s.add_argument("--text-key", default="text")
    args = p.parse_args(argv)
    if args.command == "train":
        if not 0 <= args.holdout < 1:
            p.error("--holdout must be in [0, 1)")
        report = train(args.good, args.bad, Path(args.out), holdout=args.holdout, seed=args.seed, epoch=args.epoch,
                       lr=args.lr, word_ngrams=args.word_ngrams, dim=args.dim, text_key=args.text_key)
        print(json.dumps(report, indent=2))
        return 0
    model = load_fasttext(args.model)
    for text in iter_examples(args.inputs, args.text_key):
        print(json.dumps(predict_scores(model, text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
