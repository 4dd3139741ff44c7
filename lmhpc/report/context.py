"""What every section of the report reads: the run folder, its config, the sampled documents, the options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmhpc.report.docs import Samples
from lmhpc.report.run import RunFolder, as_dict


@dataclass
class ReportInput:
    """The run being reported on and how the report was asked for."""

    run: RunFolder
    samples: Samples
    seed: int = 0
    budget: int = 4000  # documents sampled from each population
    aux_tokenizer: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """One section of the resolved config (``{}`` when absent)."""
        return as_dict(self.config.get(name))
