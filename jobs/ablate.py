#!/usr/bin/env python
"""Batch entry point of the ablate stage: `python jobs/ablate.py CONFIG [key.sub=value ...]`.

An array stage: ``--task I`` (``--num-tasks N`` defaults to the config's ``resources.ablate.tasks``) makes and
scores the variants ``I, I + N, ...``; ``--finalize`` writes the comparison (``runs/<run>/ablate/comparison.md``).
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "ablate", *sys.argv[1:]]))
