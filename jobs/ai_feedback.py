#!/usr/bin/env python
"""Batch entry point of the ai_feedback stage: `python jobs/ai_feedback.py CONFIG [key.sub=value ...]`.

An array stage over chunks of prompts: also takes ``--task I`` (``--num-tasks N`` defaults to the config's
``resources.ai_feedback.tasks``) and ``--finalize``; without them it runs every chunk, then the finalize step.
What it does: two sampled answers per prompt, judged by the model under a principle
(preference pairs in runs/<run>/ai_feedback/pairs.jsonl).
"""

import sys
from pathlib import Path

# this folder holds tokenize.py: replace it on sys.path so it cannot shadow the standard library
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from lmhpc.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["stage", "ai_feedback", *sys.argv[1:]]))
