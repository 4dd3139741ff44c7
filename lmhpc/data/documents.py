"""The unit every data stage passes along."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Document:
    """A document: stable ``id``, its ``text``, the ``source`` (domain) it came from, its ``url``
    where known, and free-form ``metadata`` (language, scores, provenance)."""

    id: str
    text: str
    source: str = ""
    url: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "text": self.text, "source": self.source}
        if self.url is not None:
            out["url"] = self.url
        out["metadata"] = self.metadata
        return out
