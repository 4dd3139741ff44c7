"""The run folder's record of what was launched where: ``<run>/pipeline.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lmhpc.fsutil import read_json, write_json

STATE_FILE = "pipeline.json"


class PipelineState:
    """Executor, stage list and, per stage, its state and job ids. Written by the launcher only."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATE_FILE
        self.data: dict[str, Any] = read_json(self.path, default=None) or {"stages": {}}

    def record_submission(self, executor: str, stages: list[str], **extra: Any) -> None:
        self.data.update(executor=executor, order=stages, submitted=time.time(), **extra)
        for s in stages:
            self.data["stages"].setdefault(s, {})
            self.data["stages"][s].update(state="pending")
            for k in ("job_ids", "returncode", "reason", "ended"):
                self.data["stages"][s].pop(k, None)
        self.save()

    def update(self, stage: str, **fields: Any) -> None:
        self.data["stages"].setdefault(stage, {}).update(fields)
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)
