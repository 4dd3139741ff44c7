"""``lmhpc report RUN``: write the run's HTML report (``runs/<run>/report/index.html``).

RUN is a run folder (``runs/demo``) or a run config (its ``run.runs_dir``/``run.name`` folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def run_folder(arg: str) -> Path:
    """The run folder named by RUN: a folder as given, or the one a config file's run section names."""
    path = Path(arg)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from lmhpc.config import load_config

        return Path(load_config(path).run_dir)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmhpc report", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder (runs/<name>) or run config")
    p.add_argument("--aux-tokenizer", default=None, metavar="PATH",
                   help="compare with this tokenizer: a folder holding tokenizer.model or tokenizer.json, or the file")
    p.add_argument("--out", default=None, help="output folder (default: <run>/report)")
    p.add_argument("--sample-docs", type=int, default=4000,
                   help="documents sampled from curate's output, and from its drops (default: 4000)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the run's seed)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [%(name)s] %(message)s")
    from lmhpc.report.build import build_report

    run = run_folder(args.run)
    if not run.is_dir():
        print(f"lmhpc report: no run folder {run}", file=sys.stderr)
        return 2
    if args.aux_tokenizer and not Path(args.aux_tokenizer).exists():
        print(f"lmhpc report: no tokenizer at {args.aux_tokenizer}", file=sys.stderr)
        return 2
    if args.sample_docs < 1:
        print("lmhpc report: --sample-docs must be >= 1", file=sys.stderr)
        return 2
    report = build_report(run, args.out, args.aux_tokenizer, args.sample_docs, args.seed)
    print(f"report: {report.path} ({len(report.sections)} sections; open it in a browser)")
    for name, error in report.errors.items():
        print(f"lmhpc report: section {name} failed: {error}", file=sys.stderr)
    return 1 if report.errors else 0
