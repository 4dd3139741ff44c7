"""The documents the report looks at: a sample of what curate kept (each marked kept or dropped by dedup) and
of what curate dropped (from ``dropped/`` when the stage wrote every drop, else its ``samples/`` per reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmhpc.curate.filters.domain import url_host
from lmhpc.report.run import RunFolder, as_dict, as_int, read_jsonl
from lmhpc.report.shards import SampleNote, iter_records, sample_records, shard_files

TEXT_CHARS = 4000  # characters of each document kept in memory (examples, the document map)
KEPT, CURATE_DROP, DEDUP_DROP = "kept", "dropped by curate", "dropped by dedup"
UNKNOWN_LANGUAGE = "unknown"


@dataclass(slots=True)
class DocRecord:
    """One sampled document: where it came from, how long it is, what the filters measured, what happened."""

    id: str
    source: str
    url: str | None
    text: str  # the first TEXT_CHARS characters
    chars: int  # characters of the whole text
    language: str
    scores: dict[str, Any]
    status: str  # KEPT, CURATE_DROP or DEDUP_DROP
    reason: str | None = None  # the qualified drop reason ("gopher_quality/short_doc", "dedup/near")

    @property
    def host(self) -> str:
        return url_host(self.url)

    @property
    def nbytes(self) -> int:
        """UTF-8 bytes of the whole text (scaled from the kept prefix when the text was cut)."""
        n = len(self.text.encode("utf-8", "replace"))
        return n if len(self.text) >= self.chars else round(n * self.chars / max(len(self.text), 1))


def _record(d: dict[str, Any], status: str, reason: str | None = None) -> DocRecord:
    text = d.get("text") if isinstance(d.get("text"), str) else ""
    meta = as_dict(d.get("metadata"))
    scores = as_dict(meta.get("scores") or d.get("scores"))
    language = meta.get("language") or as_dict(scores.get("language")).get("language")
    chars = as_int(d.get("text_chars")) or len(text)
    return DocRecord(id=str(d.get("id", "")), source=str(d.get("source") or ""),
                     url=d.get("url") if isinstance(d.get("url"), str) else None, text=text[:TEXT_CHARS],
                     chars=chars, language=language if isinstance(language, str) and language else UNKNOWN_LANGUAGE,
                     scores=scores, status=status, reason=reason)


@dataclass
class Samples:
    """The sampled documents and how each part was drawn."""

    kept: list[DocRecord] = field(default_factory=list)  # curate's output: KEPT or DEDUP_DROP
    dropped: list[DocRecord] = field(default_factory=list)  # CURATE_DROP
    kept_note: SampleNote = field(default_factory=SampleNote)
    dropped_note: str = ""
    dropped_complete: bool = False  # drawn from dropped/ (every drop written), not the per-reason samples

    @property
    def all(self) -> list[DocRecord]:
        return self.kept + self.dropped


def dedup_marks(run: RunFolder, shard: int, up_to: int) -> dict[int, str]:
    """Record index → drop reason (``dedup/exact``...) of curate shard ``shard``, read from dedup's
    ``dropped/<shard>.jsonl.zst`` (records are in line order: reading stops past ``up_to``)."""
    path = run.stage_dir("dedup") / "dropped" / f"{shard:05d}.jsonl.zst"
    marks: dict[int, str] = {}
    if not path.is_file():
        return marks
    for _, rec in iter_records(path):
        line = rec.get("line")
        if not isinstance(line, int):
            continue
        if line > up_to:
            break
        marks[line] = f"dedup/{rec.get('reason', 'dropped')}"
    return marks


def sample_kept(run: RunFolder, budget: int, seed: int) -> tuple[list[DocRecord], SampleNote]:
    """A sample of curate's output, each document marked by whether dedup kept it."""
    paths = shard_files(run.stage_dir("curate") / "data", "part-*.jsonl*")
    picked, note = sample_records(paths, budget, seed)
    # dedup numbers the documents of curate's shards; it read other files when given inputs of its own
    dedup_ran = (run.stage_dir("dedup") / "dropped").is_dir() and not as_dict(run.config().get("dedup")).get("inputs")
    last_line: dict[int, int] = {}
    for k, index, _ in picked:
        last_line[k] = max(last_line.get(k, -1), index)
    marks = {k: dedup_marks(run, k, up_to) for k, up_to in last_line.items()} if dedup_ran else {}
    docs = []
    for k, index, rec in picked:
        reason = marks.get(k, {}).get(index)
        docs.append(_record(rec, DEDUP_DROP if reason else KEPT, reason))
    return docs, note


def sample_dropped(run: RunFolder, budget: int, seed: int) -> tuple[list[DocRecord], str, bool]:
    """Documents curate dropped: a sample of ``dropped/`` when it exists, else the per-reason samples."""
    curate = run.stage_dir("curate")
    paths = shard_files(curate / "dropped", "part-*.jsonl*")
    if paths:
        picked, note = sample_records(paths, budget, seed)
        docs = []
        for _, _, rec in picked:
            reason = as_dict(rec.get("metadata")).get("drop_reason")
            docs.append(_record(rec, CURATE_DROP, reason if isinstance(reason, str) else "dropped"))
        total = as_int(sum(as_dict(run.stats("curate").get("dropped")).values()))
        return docs, f"{note.describe(total)} of curate's dropped/ folder", True
    docs = []
    files = [p for p in shard_files(curate / "samples", "*.jsonl") if not p.name.startswith("unit-")]
    for path in files:
        for rec in read_jsonl(path):
            reason = rec.get("reason")
            docs.append(_record(rec, CURATE_DROP, reason if isinstance(reason, str) else path.stem))
    note = (f"the {len(docs):,} drops curate kept for inspection (the first few of each of {len(files)} reasons; "
            "set curate.write_dropped to sample every drop)") if files else "no dropped documents on disk"
    return docs, note, False


def collect(run: RunFolder, budget: int, seed: int) -> Samples:
    """Both samples of a run (``budget`` documents at most of each)."""
    kept, kept_note = sample_kept(run, budget, seed)
    dropped, dropped_note, complete = sample_dropped(run, budget, seed)
    return Samples(kept=kept, dropped=dropped, kept_note=kept_note, dropped_note=dropped_note,
                   dropped_complete=complete)

