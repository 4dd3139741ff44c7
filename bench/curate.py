#!/usr/bin/env python3
"""Benchmark: lmhpc's heuristic filters against datatrove's on the same corpus, in one run.

Both sides run the FineWeb heuristic chain in FineWeb's order — Gopher repetition, Gopher quality,
C4 (FineWeb's settings: no terminal-punctuation rule) and FineWeb quality — one document at a time on
one core, and every document's keep/drop decision is compared. datatrove runs twice:

* ``datatrove``: as shipped for English (its spaCy word tokenizer, a blank ``en`` pipeline, no model
  download, so it works offline). This is the speed reference.
* ``datatrove+lmhpc_words``: datatrove's filters with lmhpc's word splitter plugged in as its word
  tokenizer. Disagreements left here come from the rules alone, not from word splitting.

Then the curate stage itself (reading, filtering, writing shards) runs with 1 and 2 array tasks on
the local executor, for the scaling figure. Results go to ``bench/results/curate.json``.

    .venv/bin/python bench/curate.py                     # data/sample (all sources)
    .venv/bin/python bench/curate.py --inputs 'data/sample/web/*' --max-docs 2000
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds scripts named like standard modules (tokenize.py): keep it off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lmhpc.curate.filters.base import result_reason  # noqa: E402
from lmhpc.curate.filters.c4 import C4QualityFilter  # noqa: E402
from lmhpc.curate.filters.config import FiltersConfig  # noqa: E402
from lmhpc.curate.filters.fineweb import FineWebQualityFilter  # noqa: E402
from lmhpc.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter  # noqa: E402
from lmhpc.curate.filters.text import TextView, split_words  # noqa: E402
from lmhpc.data.documents import Document  # noqa: E402
from lmhpc.data.inputs import InputSpec  # noqa: E402
from lmhpc.data.quarantine import Quarantine  # noqa: E402
from lmhpc.data.readers import read_documents  # noqa: E402

DEFAULT_INPUTS = ["data/sample/web/*.warc.gz", "data/sample/prose/*.jsonl.*", "data/sample/code/*.jsonl.*",
                  "data/sample/license/*.jsonl.*"]
# datatrove's reason names → ours (qualified by filter)
DATATROVE_REASONS = {
    "gopher_short_doc": "gopher_quality/short_doc",
    "gopher_long_doc": "gopher_quality/long_doc",
    "gopher_below_avg_threshold": "gopher_quality/below_avg_word_length",
    "gopher_above_avg_threshold": "gopher_quality/above_avg_word_length",
    "gopher_too_many_hashes": "gopher_quality/too_many_hashes",
    "gopher_too_many_ellipsis": "gopher_quality/too_many_ellipsis",
    "gopher_too_many_bullets": "gopher_quality/too_many_bullets",
    "gopher_too_many_end_ellipsis": "gopher_quality/too_many_end_ellipsis",
    "gopher_below_alpha_threshold": "gopher_quality/below_alpha_threshold",
    "gopher_enough_stop_words": "gopher_quality/not_enough_stop_words",
    "lorem_ipsum": "c4/lorem_ipsum",
    "curly_bracket": "c4/curly_bracket",
    "too_few_sentences": "c4/too_few_sentences",
}
DT_FILTER_OF = {"GopherRepetitionFilter": "gopher_repetition", "GopherQualityFilter": "gopher_quality",
                "C4QualityFilter": "c4", "FineWebQualityFilter": "fineweb"}


def snapshot_inputs(patterns: list[str], into: Path) -> list[str]:
    """Copy the files the patterns match into ``into`` (one folder per pattern), so every part of the
    benchmark reads the same bytes; returns the patterns rewritten to the copies."""
    out = []
    for i, pattern in enumerate(patterns):
        full = pattern if os.path.isabs(pattern) else str(REPO / pattern)
        folder = into / f"input-{i}"
        folder.mkdir(parents=True)
        for f in sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p)):
            shutil.copy(f, folder / Path(f).name)
        out.append(str(folder / "*"))
    return out


def load_corpus(patterns: list[str], max_docs: int | None) -> list[Document]:
    """Every readable document of the input files (bad records are skipped here), in file order."""
    docs: list[Document] = []
    files = sorted({p for pattern in patterns for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)})
    with tempfile.TemporaryDirectory() as tmp:
        quarantine = Quarantine(Path(tmp) / "q.jsonl")
        for f in files:
            for doc in read_documents(Path(f), InputSpec(path=f), quarantine):
                docs.append(doc)
                if max_docs and len(docs) >= max_docs:
                    return docs
        quarantine.close()
    return docs


# --------------------------------------------------------------------------------------------
# the two sides


def lmhpc_chain() -> list[Any]:
    cfg = FiltersConfig()
    return [GopherRepetitionFilter(cfg.gopher_repetition), GopherQualityFilter(cfg.gopher_quality),
            C4QualityFilter(cfg.c4), FineWebQualityFilter(cfg.fineweb)]


def run_lmhpc(docs: list[Document]) -> tuple[list[str | None], float]:
    filters = lmhpc_chain()
    decisions: list[str | None] = []
    copies = [Document(d.id, d.text, d.source, d.url, {}) for d in docs]
    started = time.process_time()
    for doc in copies:
        view = TextView(doc)
        reason = None
        for f in filters:
            reason = f(view)
            if reason is not None:
                break
        decisions.append(reason)
    return decisions, time.process_time() - started


def datatrove_chain(language: Any) -> list[Any]:
    from datatrove.pipeline.filters import (
        C4QualityFilter as DtC4,
    )
    from datatrove.pipeline.filters import (
        FineWebQualityFilter as DtFineWeb,
    )
    from datatrove.pipeline.filters import (
        GopherQualityFilter as DtGopherQuality,
    )
    from datatrove.pipeline.filters import (
        GopherRepetitionFilter as DtGopherRepetition,
    )

    return [DtGopherRepetition(language=language), DtGopherQuality(language=language),
            DtC4(filter_no_terminal_punct=False, language=language), DtFineWeb(language=language)]


def lmhpc_word_tokenizer() -> Any:
    """lmhpc's word splitter (and C4 sentence rule) as a datatrove WordTokenizer."""
    from datatrove.utils.word_tokenizers import WordTokenizer, simple_span_tokenize

    from lmhpc.curate.filters.c4 import SENTENCE_BREAK

    class LmhpcWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return split_words(text)

        def sent_tokenize(self, text: str) -> list[str]:
            out, start = [], 0
            for m in SENTENCE_BREAK.finditer(text):
                out.append(text[start:m.end()].strip())
                start = m.end()
            out.append(text[start:].strip())
            return [s for s in out if s]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return list(simple_span_tokenize(text, self.sent_tokenize(text)))

    return LmhpcWords()


def run_datatrove(docs: list[Document], language: Any) -> tuple[list[str | None], float]:
    from datatrove.data import Document as DtDocument

    filters = datatrove_chain(language)
    copies = [DtDocument(text=d.text, id=d.id) for d in docs]
    decisions: list[str | None] = []
    started = time.process_time()
    for doc in copies:
        reason = None
        for f in filters:
            r = result_reason(f.filter(doc))
            if r is not None:
                name = DT_FILTER_OF[type(f).__name__]
                reason = DATATROVE_REASONS.get(r, f"{name}/{r}")
                break
        decisions.append(reason)
    return decisions, time.process_time() - started


def compare(ours: list[str | None], theirs: list[str | None]) -> dict[str, Any]:
    """Keep/drop agreement, and the disagreements by (our reason, their reason)."""
    same_decision = sum(1 for a, b in zip(ours, theirs) if (a is None) == (b is None))
    same_reason = sum(1 for a, b in zip(ours, theirs) if a == b)
    pairs = Counter(f"{a or 'kept'} | {b or 'kept'}" for a, b in zip(ours, theirs) if (a is None) != (b is None))
    return {
        "docs": len(ours),
        "decision_agreement": round(same_decision / len(ours), 5) if ours else None,
        "reason_agreement": round(same_reason / len(ours), 5) if ours else None,
        "disagreements": dict(pairs.most_common()),
        "kept_lmhpc": sum(1 for a in ours if a is None),
        "kept_other": sum(1 for b in theirs if b is None),
    }


# --------------------------------------------------------------------------------------------
# stage scaling


def stage_scaling(patterns: list[str], tasks: list[int]) -> dict[str, Any]:
    """Wall time of the whole curate stage (read, filter, write) with 1 and 2 array tasks."""
    out: dict[str, Any] = {}
    inputs = [{"path": p} for p in patterns if glob.glob(p)]
    filters = {"language": {"enabled": False}, "domain": {"enabled": False}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in tasks:
            config = Path(tmp) / f"bench-{n}.yaml"
            config.write_text(yaml.safe_dump({
                "run": {"name": f"bench{n}", "runs_dir": str(Path(tmp) / "runs"), "stages": ["curate"]},
                "wandb": {"mode": "disabled"},
                "resources": {"curate": {"tasks": n}},
                "curate": {"inputs": inputs, "filters": filters, "max_bad_fraction": 1.0},
            }))
            started = time.time()
            res = subprocess.run([sys.executable, "-m", "lmhpc", "run", str(config), "--stages", "curate"],
                                 cwd=REPO, capture_output=True, text=True)
            wall = time.time() - started
            if res.returncode != 0:
                raise RuntimeError(f"curate with {n} tasks failed:\n{res.stderr[-3000:]}")
            stats = json.loads((Path(tmp) / "runs" / f"bench{n}" / "curate" / "stats.json").read_text())
            out[f"tasks_{n}"] = {"wall_s": round(wall, 2), "docs_in": stats["docs_in"],
                                 "docs_per_s": round(stats["docs_in"] / wall, 1)}
    if len(tasks) == 2:
        out["speedup"] = round(out[f"tasks_{tasks[0]}"]["wall_s"] / out[f"tasks_{tasks[1]}"]["wall_s"], 2)
    return out


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": _cpu_name(), "loadavg_1_5_15": [round(x, 2) for x in load]}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", default=DEFAULT_INPUTS)
    p.add_argument("--max-docs", type=int, default=None)
    p.add_argument("--repeat", type=int, default=1, help="passes over the corpus per side (best is kept)")
    p.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 task stage runs")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "curate.json"))
    args = p.parse_args()

    snapshot_dir = tempfile.TemporaryDirectory(prefix="bench-curate-")
    inputs = snapshot_inputs(args.inputs, Path(snapshot_dir.name))
    docs = load_corpus(inputs, args.max_docs)
    if not docs:
        print(f"no documents found in {args.inputs}", file=sys.stderr)
        return 1
    chars = sum(len(d.text) for d in docs)
    load_before = os.getloadavg()
    from datatrove.utils.typeshelper import Languages

    tokenizer = lmhpc_word_tokenizer()
    run_datatrove(docs[:20], Languages.english)  # warm up spaCy
    sides: dict[str, tuple[list[str | None], float]] = {}
    for _ in range(args.repeat):
        for name, fn in (("lmhpc", lambda: run_lmhpc(docs)),
                         ("datatrove", lambda: run_datatrove(docs, Languages.english)),
                         ("datatrove+lmhpc_words", lambda: run_datatrove(docs, tokenizer))):
            decisions, cpu = fn()
            if name not in sides or cpu < sides[name][1]:
                sides[name] = (decisions, cpu)
    figures = {name: {"cpu_s": round(cpu, 3), "docs_per_s_per_core": round(len(docs) / cpu, 1),
                      "mb_per_s_per_core": round(chars / cpu / 1e6, 3),
                      "kept": sum(1 for r in dec if r is None)}
               for name, (dec, cpu) in sides.items()}
    result: dict[str, Any] = {
        "benchmark": "curate heuristic filters (Gopher repetition + Gopher quality + C4 + FineWeb), one core",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python bench/curate.py " + " ".join(sys.argv[1:]),
        "corpus": {"inputs": args.inputs, "docs": len(docs), "chars": chars,
                   "sources": dict(Counter(d.source for d in docs))},
        "figures": figures,
        "ratio_vs_datatrove": round(figures["lmhpc"]["docs_per_s_per_core"]
                                    / figures["datatrove"]["docs_per_s_per_core"], 2),
        "ratio_vs_datatrove_same_words": round(figures["lmhpc"]["docs_per_s_per_core"]
                                               / figures["datatrove+lmhpc_words"]["docs_per_s_per_core"], 2),
        "agreement_vs_datatrove": compare(sides["lmhpc"][0], sides["datatrove"][0]),
        "agreement_vs_datatrove_same_words": compare(sides["lmhpc"][0], sides["datatrove+lmhpc_words"][0]),
        "drop_reasons": {name: dict(Counter(r for r in dec if r is not None).most_common())
                         for name, (dec, _) in sides.items()},
        "versions": {pkg: version(pkg) for pkg in ("datatrove", "spacy", "numpy")},
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # the filter figures, before the stage runs
    print(f"corpus: {len(docs)} docs, {chars / 1e6:.1f} M chars ({args.inputs})")
    print(f"{'side':<24} {'docs/s/core':>12} {'MB/s/core':>10} {'kept':>7}")
    for name, f in figures.items():
        print(f"{name:<24} {f['docs_per_s_per_core']:>12} {f['mb_per_s_per_core']:>10} {f['kept']:>7}")
    print(f"ratio vs datatrove: {result['ratio_vs_datatrove']}x "
          f"(vs datatrove with the same word splitter: {result['ratio_vs_datatrove_same_words']}x)")
    for key in ("agreement_vs_datatrove", "agreement_vs_datatrove_same_words"):
        a = result[key]
        print(f"{key}: decisions {a['decision_agreement']:.4f}, reasons {a['reason_agreement']:.4f}; "
              f"differences (ours | theirs): {a['disagreements']}")
    if not args.no_scaling:
        result["stage_scaling"] = stage_scaling(inputs, [1, 2])
        result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"stage scaling: {result['stage_scaling']}")
    snapshot_dir.cleanup()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
