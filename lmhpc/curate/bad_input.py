"""The bad-input limit (``curate.max_bad_fraction``), checked while a unit is read and over the whole stage."""

from __future__ import annotations

from typing import Any

from lmhpc.runner import StageFailed

MIN_RECORDS = 100  # records a unit must have read before its own bad fraction can fail it


class TooMuchBadInput(StageFailed):
    """More than ``curate.max_bad_fraction`` of the records are bad.

    ``stats`` holds the stats counted up to the failure (a unit's partial stats, or the stage's merged
    ones), in the shape of ``stats.json``, so that they can be written for inspection.
    """

    def __init__(self, message: str, stats: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.stats: dict[str, Any] = stats if stats is not None else {}


def check_fraction(where: str, bad: int, total: int, limit: float, reasons: dict[str, int], see: str) -> None:
    """Raise ``TooMuchBadInput`` when ``bad / total`` is above ``limit``."""
    if total and bad / total > limit:
        raise TooMuchBadInput(
            f"{where}: {bad} of {total} records are bad ({bad / total:.1%}: {reasons}), "
            f"more than curate.max_bad_fraction={limit}; see {see}"
        )


class BadFractionGuard:
    """Fails a unit as soon as its bad fraction passes the limit, once it has read ``min_records``."""

    def __init__(self, where: str, limit: float, see: str, min_records: int = MIN_RECORDS) -> None:
        self.where, self.limit, self.see, self.min_records = where, limit, see, min_records

    def check(self, bad: int, total: int, reasons: dict[str, int]) -> None:
        """Raise ``TooMuchBadInput`` (without stats: the caller adds them) when the limit is passed."""
        if total >= self.min_records:
            check_fraction(f"{self.where}, stopped early", bad, total, self.limit, reasons, self.see)
