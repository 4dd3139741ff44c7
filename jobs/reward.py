#!/usr/bin/env python
"""Batch entry point of the reward stage: `python jobs/reward.py CONFIG [key.sub=value ...]`.

Trains the reward model in this process (or this allocation's ranks, one per GPU: RANK / WORLD_SIZE set by
the launcher); what every reward job runs.
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "reward", *sys.argv[1:]]))
