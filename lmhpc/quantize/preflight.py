"""Checks of the quantize stage before anything is submitted: the model it starts from and the calibration data."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmhpc.config import RunConfig


def preflight(cfg: RunConfig) -> list[str]:
    """A model named by ``quantize.init_from`` that is missing or that a method cannot take; GPTQ without
    calibration shards. Each problem names its key."""
    from lmhpc.config import ConfigError
    from lmhpc.tokenizer.indexed import exists

    q = cfg.quantize
    problems: list[str] = []
    if q.init_from:
        path = cfg.path(q.init_from)
        if not path.exists():
            problems.append(f"quantize.init_from: {path} does not exist")
        else:
            from lmhpc.exchange.load import read_weights

            try:
                args = read_weights(path).args
                for i, method in enumerate(q.methods):
                    method.check_model(f"quantize.methods[{i}]", args, f"quantize.init_from ({path})")
            except ConfigError as err:
                problems.append(str(err))
            except (ValueError, OSError) as err:
                problems.append(f"quantize.init_from: {path}: {err}")
    if q.needs_calibration():
        if q.calibration.prefixes:
            for i, prefix in enumerate(q.calibration.prefixes):
                if not exists(cfg.path(prefix)):
                    problems.append(f"quantize.calibration.prefixes[{i}]: {cfg.path(prefix)}.bin/.idx does not exist")
        elif "tokenize" not in cfg.run.stages and not (cfg.run_dir / "tokenize" / "DONE").exists():
            problems.append("quantize.calibration: GPTQ needs calibration shards: chain the tokenize stage in "
                            "run.stages, or set quantize.calibration.prefixes")
    return problems
