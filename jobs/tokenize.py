#!/usr/bin/env python
"""Batch entry point of the tokenize stage: `python jobs/tokenize.py CONFIG [key.sub=value ...]`.

Array stages also take ``--task I`` (``--num-tasks N`` defaults to the config's
``resources.<stage>.tasks``) and ``--finalize``.

Runs the stage in this process (or this allocation's ranks); what every tokenize job runs.
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "tokenize", *sys.argv[1:]]))
