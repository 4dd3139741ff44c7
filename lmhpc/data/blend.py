"""The data blend: which indexed datasets training reads, with which weights, in the form Megatron and NeMo take.

``blend.json`` holds ``data_path``: ``[weight, prefix, weight, prefix, ...]`` with absolute prefixes, which is
Megatron-LM's ``--data-path`` (and NeMo's ``paths``) as a list; megatron-core's ``get_blend_from_list`` turns
it into a ``BlendedMegatronDatasetConfig.blend``. ``data_args.txt`` is the same as one line, for Megatron-LM's
``--data-args-path``. Weights are normalised to sum to 1.

Source weights: mix ``natural`` gives each source ``weight x tokens`` (a weight is an upsampling factor: 1
keeps the natural share, 2 reads that source twice as often); mix ``weights`` uses the weights as the shares.
Within a source kept as several shards, its weight is split by the shards' token counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from lmhpc.fsutil import write_json, write_text

BLEND_FILE = "blend.json"
DATA_ARGS_FILE = "data_args.txt"


def source_shares(tokens: dict[str, int], weights: dict[str, float], mix: Literal["weights", "natural"]
                  ) -> dict[str, float]:
    """Normalised weight of each source (sources without tokens, or of weight 0, get none)."""
    raw = {s: weights.get(s, 1.0) * (n if mix == "natural" else 1.0) for s, n in tokens.items() if n > 0}
    raw = {s: w for s, w in raw.items() if w > 0}
    total = sum(raw.values())
    return {s: w / total for s, w in sorted(raw.items())} if total else {}


def blend_entries(outputs: dict[str, dict[str, Any]], weights: dict[str, float],
                  mix: Literal["weights", "natural"]) -> list[tuple[float, str, str]]:
    """``(weight, prefix relative to the stage folder, source)`` for every dataset in the blend, in source
    order. ``outputs[source]["prefixes"]`` lists ``{"prefix", "tokens", "docs"}`` per dataset."""
    shares = source_shares({s: o["tokens"] for s, o in outputs.items()}, weights, mix)
    entries = []
    for source, share in shares.items():
        parts = [p for p in outputs[source]["prefixes"] if p["tokens"] > 0]
        total = sum(p["tokens"] for p in parts)
        for p in parts:
            entries.append((share * p["tokens"] / total, p["prefix"], source))
    return entries


def write_blend(stage_dir: Path, entries: list[tuple[float, str, str]], outputs: dict[str, dict[str, Any]],
                meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``blend.json`` and ``data_args.txt``; returns the blend."""
    stage_dir = Path(stage_dir).resolve()
    data_path: list[Any] = []
    relative: list[Any] = []
    for weight, prefix, _ in entries:
        data_path += [weight, str(stage_dir / prefix)]
        relative += [weight, prefix]
    sources = {}
    for source, out in outputs.items():
        sources[source] = {
            "weight": sum(w for w, _, s in entries if s == source),
            "tokens": out["tokens"],
            "docs": out["docs"],
            "prefixes": [p["prefix"] for p in out["prefixes"]],
        }
    blend = {
        "data_path": data_path,
        "data_path_relative": relative,
        "sources": sources,
        "total_tokens": sum(o["tokens"] for o in outputs.values()),
        **meta,
    }
    write_json(stage_dir / BLEND_FILE, blend)
    write_text(stage_dir / DATA_ARGS_FILE, " ".join(str(x) for x in data_path) + "\n")
    return blend


def load_blend(path: Path) -> dict[str, Any]:
    """Read a ``blend.json``; ``data_path`` uses absolute prefixes as written, or, when the run folder moved,
    the relative ones resolved against the file's folder."""
    import json

    path = Path(path)
    blend = json.loads(path.read_text())
    first = blend["data_path"][1] if len(blend["data_path"]) > 1 else None
    if first is not None and not Path(f"{first}.idx").exists():
        rel = blend["data_path_relative"]
        blend["data_path"] = [x if i % 2 == 0 else str(path.parent / x) for i, x in enumerate(rel)]
    return blend


def read_blend(path: Path) -> tuple[list[str], list[float], int | None]:
    """Prefixes, weights and end-of-document id of the tokenize stage's ``blend.json``
    (``data_path: [weight, prefix, weight, prefix, ...]``, Megatron's ``--data-path`` as a list)."""
    if not path.is_file():
        raise FileNotFoundError(f"no {path}: run the tokenize stage, or set pretrain.data.prefixes")
    blend = load_blend(path)
    data_path = blend.get("data_path") or []
    if not data_path or len(data_path) % 2:
        raise ValueError(f"{path}: 'data_path' must be a non-empty list of weight, prefix pairs")
    weights = [float(w) for w in data_path[0::2]]
    prefixes = [str(p) for p in data_path[1::2]]
    eod = blend.get("eod_id")
    return prefixes, weights, None if eod is None else int(eod)
