#!/usr/bin/env python
"""Batch entry point of the constitutional stage: `python jobs/constitutional.py CONFIG [key.sub=value ...]`.

An array stage over chunks of prompts: also takes ``--task I`` (``--num-tasks N`` defaults to the config's
``resources.constitutional.tasks``) and ``--finalize``; without them it runs every chunk, then the finalize step.
What it does: answer, critique and revise red-team prompts under the constitution
(SFT data in runs/<run>/constitutional/sft.jsonl).
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "constitutional", *sys.argv[1:]]))
