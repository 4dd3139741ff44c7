#!/usr/bin/env python
"""Batch entry point of the medusa stage: `python jobs/medusa.py CONFIG [key.sub=value ...]`.

Trains Medusa heads on the run's model (frozen) and tokens, written to ``runs/<run>/medusa/`` for
``lmhpc generate MODEL --medusa runs/<run>/medusa``.
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "medusa", *sys.argv[1:]]))
