#!/usr/bin/env python
"""Batch entry point of the quantize stage: `python jobs/quantize.py CONFIG [key.sub=value ...]`.

Runs the stage in this process: each of ``quantize.methods`` applied to the run's model, written to
``runs/<run>/quantize/<name>/``, with ``results.json`` and ``results.md`` comparing them to the float model.
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "quantize", *sys.argv[1:]]))
