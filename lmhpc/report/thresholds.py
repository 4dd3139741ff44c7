"""Which config setting bounds which filter score, so a score's distribution can be drawn with its threshold.

Read from the resolved config's ``curate.filters`` (a plain dict), with a source's ``per_source`` override
merged over it the way the curate stage merges it. A bound is ``(setting, side, value)``: ``side`` is ``min``
(documents below are dropped) or ``max`` (documents above are dropped).
"""

from __future__ import annotations

import copy
import re
from typing import Any

# filter -> score -> [(setting, side)]; n-gram scores are matched by pattern below
BOUNDS: dict[str, dict[str, list[tuple[str, str]]]] = {
    "length": {w: [(f"min_{w}", "min"), (f"max_{w}", "max")] for w in ("chars", "words", "lines")},
    "language": {"score": [("min_score", "min")]},
    "gopher_quality": {
        "words": [("min_doc_words", "min"), ("max_doc_words", "max")],
        "mean_word_length": [("min_avg_word_length", "min"), ("max_avg_word_length", "max")],
        "hash_ratio": [("max_symbol_word_ratio", "max")],
        "ellipsis_ratio": [("max_symbol_word_ratio", "max")],
        "bullet_lines_ratio": [("max_bullet_lines_ratio", "max")],
        "ellipsis_lines_ratio": [("max_ellipsis_lines_ratio", "max")],
        "alpha_words_ratio": [("min_alpha_words_ratio", "min")],
        "stop_words": [("min_stop_words", "min")],
    },
    "gopher_repetition": {k: [(k, "max")] for k in ("dup_para_frac", "dup_para_char_frac", "dup_line_frac",
                                                     "dup_line_char_frac")},
    "c4": {"sentences": [("min_num_sentences", "min")]},
    "fineweb": {
        "line_punct_ratio": [("line_punct_thr", "min")],
        "short_line_ratio": [("short_line_thr", "max")],
        "char_dup_ratio": [("char_duplicates_ratio", "max")],
        "newline_ratio": [("new_line_ratio", "max")],
    },
    "code": {
        "lines": [("min_lines", "min"), ("max_lines", "max")],
        "max_line_length": [("max_line_length", "max")],
        "mean_line_length": [("max_mean_line_length", "max")],
        "alnum_fraction": [("min_alnum_fraction", "min")],
    },
    "perplexity": {"perplexity": [("min", "min"), ("max", "max")]},
}
NGRAM_SCORE = re.compile(r"(top|dup)_(\d+)_gram")
LOG_SCALE = {("perplexity", "perplexity"), ("gopher_quality", "words"), ("length", "chars"), ("length", "words"),
             ("code", "lines"), ("code", "max_line_length")}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` merged over ``base`` (n-gram tables are replaced whole, as the curate stage does)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("top_n_grams", "dup_n_grams"):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def filters_for(filters: dict[str, Any], source: str | None) -> dict[str, Any]:
    """The filter settings a source ran under (the global ones when ``source`` is None or has no override)."""
    override = filters.get("per_source", {}).get(source) if source is not None else None
    return merge(filters, override) if isinstance(override, dict) else filters


def bounds(filters: dict[str, Any], name: str, score: str) -> list[tuple[str, str, float]]:
    """The active bounds on one score of one filter: ``[(setting, side, value)]``."""
    settings = filters.get(name)
    if not isinstance(settings, dict) or not settings.get("enabled", False):
        return []
    out: list[tuple[str, str, float]] = []
    m = NGRAM_SCORE.fullmatch(score)
    if name == "gopher_repetition" and m:
        table = settings.get("top_n_grams" if m.group(1) == "top" else "dup_n_grams") or {}
        value = table.get(m.group(2))
        if isinstance(value, int | float):
            out.append((f"{'top' if m.group(1) == 'top' else 'dup'}_n_grams.{m.group(2)}", "max", float(value)))
        return out
    if name == "classifier":
        for group, side in (("keep_labels", "min"), ("remove_labels", "max")):
            value = (settings.get(group) or {}).get(score)
            if isinstance(value, int | float):
                out.append((f"{group}.{score}", side, float(value)))
        return out
    for setting, side in BOUNDS.get(name, {}).get(score, []):
        value = settings.get(setting)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.append((setting, side, float(value)))
    return out


def log_scale(name: str, score: str) -> bool:
    """Whether the score spans orders of magnitude (drawn on a log axis)."""
    return (name, score) in LOG_SCALE
