"""Documents and bytes in and out of each data stage, per source.

Counts of documents come from the stages' stats (exact). Text bytes are exact where a later stage measured
them (the tokenizer and tokenize stages read every document dedup kept); elsewhere they are estimated as
documents × the mean size of that source's sampled documents, and marked so. Curate's input is also given as
the size of its input files on disk (compressed), from the unit list frozen at its first start.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from lmhpc.report.context import ReportInput
from lmhpc.report.docs import CURATE_DROP, KEPT, DocRecord
from lmhpc.report.run import as_dict, as_int, read_json


@dataclass(frozen=True)
class Amount:
    """A figure and whether it was measured (``exact``), estimated from the sample or read from file sizes."""

    value: float
    kind: str = "exact"  # exact | estimate | disk

    def text(self) -> str:
        mb = f"{self.value / 1e6:,.2f} MB"
        return {"estimate": f"≈ {mb}", "disk": f"{mb} (files)"}.get(self.kind, mb)


@dataclass
class Flow:
    """One stage and source: documents and text bytes in and out (None: unknown)."""

    stage: str
    source: str
    docs_in: int | None = None
    docs_out: int | None = None
    bytes_in: Amount | None = None
    bytes_out: Amount | None = None
    tokens_out: int | None = None


def _mean_bytes(docs: list[DocRecord]) -> dict[str, float]:
    sizes: dict[str, list[int]] = defaultdict(list)
    for d in docs:
        sizes[d.source].append(d.nbytes)
    return {s: sum(v) / len(v) for s, v in sizes.items() if v}


def input_file_bytes(rin: ReportInput) -> dict[str, int]:
    """Bytes of curate's input files on disk, per source (from ``_units.json``)."""
    units = as_dict(read_json(rin.run.stage_dir("curate") / "_units.json")).get("units")
    inputs = rin.section("curate").get("inputs") or []
    out: dict[str, int] = defaultdict(int)
    for u in units if isinstance(units, list) else []:
        if not isinstance(u, dict) or not isinstance(u.get("unit"), str) or ":" not in u["unit"]:
            continue
        index, path = u["unit"].split(":", 1)
        spec = inputs[int(index)] if index.isdigit() and int(index) < len(inputs) else {}
        source = (spec.get("source") if isinstance(spec, dict) else None) or Path(path).parent.name
        out[source] += as_int(u.get("size"))
    return dict(out)


def _measured_dedup_output(rin: ReportInput) -> dict[str, tuple[int, int]]:
    """Source → (documents, text bytes) of dedup's output, as the tokenize or tokenizer stage counted them."""
    per_source = as_dict(rin.run.stats("tokenize").get("per_source"))
    if per_source:
        return {s: (as_int(v.get("docs")), as_int(v.get("bytes")))
                for s, v in per_source.items() if isinstance(v, dict)}
    seen = as_dict(as_dict(read_json(rin.run.stage_dir("tokenizer") / "sample.json")).get("input"))
    out = {}
    for source, langs in seen.items():
        rows = [v for v in as_dict(langs).values() if isinstance(v, dict)]
        out[source] = (sum(as_int(r.get("docs")) for r in rows), sum(as_int(r.get("bytes")) for r in rows))
    return out


def flows(rin: ReportInput) -> list[Flow]:
    """Per stage and source, in chain order."""
    run, samples = rin.run, rin.samples
    out: list[Flow] = []
    curate_sources = as_dict(run.stats("curate").get("per_source"))
    kept_mean = _mean_bytes(samples.kept)
    after_dedup_mean = _mean_bytes([d for d in samples.kept if d.status == KEPT])
    exact_kept = samples.kept_note.complete and samples.kept_note.taken == samples.kept_note.scanned
    drop_mean: dict[str, float] = defaultdict(float)
    drop_sizes: dict[str, list[int]] = defaultdict(list)
    for d in samples.dropped:
        if d.status == CURATE_DROP and d.reason:
            drop_sizes[d.reason].append(d.nbytes)
    drop_mean.update({r: sum(v) / len(v) for r, v in drop_sizes.items()})
    curate_out_bytes: dict[str, Amount] = {}
    for source, sub in sorted(curate_sources.items()):
        sub = as_dict(sub)
        docs_out = as_int(sub.get("docs_out"))
        if source in kept_mean:
            kind = "exact" if exact_kept else "estimate"
            curate_out_bytes[source] = Amount(docs_out * kept_mean[source], kind)
        bytes_in = None
        if source in curate_out_bytes:
            fallback = kept_mean.get(source, 0.0)
            dropped = sum(as_int(n) * drop_mean.get(r, fallback) for r, n in as_dict(sub.get("dropped")).items())
            bytes_in = Amount(curate_out_bytes[source].value + dropped, "estimate")
        out.append(Flow("curate", source, as_int(sub.get("docs_in")), docs_out, bytes_in,
                        curate_out_bytes.get(source)))
    if run.has("dedup"):
        measured = _measured_dedup_output(rin)
        for source in sorted(set(curate_sources) | set(measured)):
            docs_in = as_int(as_dict(curate_sources.get(source)).get("docs_out")) if source in curate_sources else None
            flow = Flow("dedup", source, docs_in, bytes_in=curate_out_bytes.get(source))
            if source in measured:
                flow.docs_out, nbytes = measured[source]
                flow.bytes_out = Amount(nbytes)
            elif docs_in is not None:
                sampled = [d for d in samples.kept if d.source == source]
                if sampled:
                    share = sum(d.status == KEPT for d in sampled) / len(sampled)
                    flow.docs_out = round(docs_in * share)
                    flow.bytes_out = Amount(flow.docs_out * after_dedup_mean.get(source, 0.0), "estimate")
            out.append(flow)
    for source, v in sorted(as_dict(run.stats("tokenize").get("per_source")).items()):
        v = as_dict(v)
        docs = as_int(v.get("docs"))
        out.append(Flow("tokenize", source, docs, docs, Amount(as_int(v.get("bytes"))), None, as_int(v.get("tokens"))))
    return out
