"""The curate stage's check before anything is submitted: its input files are there and of a known format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lmhpc.data.check import check_inputs

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def preflight(cfg: RunConfig) -> list[str]:
    """One line per problem with the curate inputs, each starting with its key ``curate.inputs[<i>].path``
    and naming the file (or the glob that matches nothing); empty when every input looks readable."""
    return check_inputs(cfg.curate.inputs, cfg.path, "curate.inputs")
