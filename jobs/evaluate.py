#!/usr/bin/env python
"""Batch entry point of the evaluate stage: `python jobs/evaluate.py CONFIG [key.sub=value ...]`.

Runs the stage in this process: perplexity and benchmark scores of the run's checkpoints (or of
``evaluate.models``), written to ``runs/<run>/evaluate/results.json`` and ``results.md``.
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "evaluate", *sys.argv[1:]]))
