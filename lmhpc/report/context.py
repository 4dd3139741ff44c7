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

    def sources(self) -> list[str]:
        """Every source seen: in curate's stats, the tokenize stage's, or the sample."""
        names = set(as_dict(self.run.stats("curate").get("per_source")))
        names |= set(as_dict(self.run.stats("tokenize").get("per_source")))
        names |= {d.source for d in self.samples.all}
        return sorted(n for n in names if isinstance(n, str))
