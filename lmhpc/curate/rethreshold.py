"""Re-apply different filter thresholds and selection to curated output, without scoring again.

The curate stage writes every filter's scores into ``metadata.scores``; with ``curate.write_dropped``
it also keeps the dropped documents (``dropped/``). This tool runs the filters and selection of a
config over those documents: a filter whose scores are stored only decides on them (no text work,
no model call); a filter without stored scores (not run before, or other n-gram sizes) measures
the document. Kept documents are written to ``<out>/data/``, one output file per input shard, in
order; the report shows each source's kept count before and after.

    python -m lmhpc.curate.rethreshold runs/demo/curate new.yaml --out runs/demo/curate-strict
    python -m lmhpc.curate.rethreshold runs/demo/curate new.yaml curate.filters.fineweb.line_punct_thr=0.2 --dry-run

Thresholds only loosen as far as the documents at hand allow: without ``dropped/``, documents the
stage dropped cannot come back. Line-level C4 settings apply only to documents whose lines were not
cleaned yet (the kept ones were cleaned with the stage's settings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lmhpc.config import ConfigError, load_config
from lmhpc.curate.filters.chain import ChainSet
from lmhpc.curate.filters.domain import url_host
from lmhpc.curate.selection import Selector
from lmhpc.data.writers import ShardWriter, iter_jsonl_docs
from lmhpc.fsutil import write_json


def shard_files(curate_dir: Path) -> list[tuple[str, Path]]:
    """(``data`` or ``dropped``, path) of every shard of a curate output folder, in name order."""
    out = []
    for kind in ("data", "dropped"):
        out.extend((kind, p) for p in sorted((curate_dir / kind).glob("part-*.jsonl*")))
    return out


def rethreshold(curate_dir: Path, config: Path, overrides: list[str], out: Path | None,
                write_dropped: bool = False) -> dict[str, Any]:
    """Apply ``config``'s filters and selection to the documents of ``curate_dir``; write to ``out``
    unless it is None (a dry run). Returns stats with per-source counts before and after."""
    cfg = load_config(config, overrides)
    curate = cfg.curate
    weights = {spec.source: spec.weight for spec in curate.inputs if spec.source}
    chains = ChainSet(curate.filters, Path(cfg.base_dir), curate.samples_per_reason, write_scores=True)
    selector = Selector(curate.selection, cfg.run.seed)
    files = shard_files(curate_dir)
    if not files:
        raise FileNotFoundError(f"no shards under {curate_dir}/data or {curate_dir}/dropped")
    stats: dict[str, Any] = {"docs_in": 0, "docs_out": 0, "quarantined": 0, "dropped": {}, "per_source": {},
                             "per_domain": {}}
    for kind, path in files:
        writer = None
        if out is not None:
            name = path.name.split(".jsonl")[0]
            writer = ShardWriter(out / "data", f"{kind}-{name}", max_bytes=int(curate.shard_max_mb * 2**20))
            dropped_writer = ShardWriter(out / "dropped", f"{kind}-{name}", max_bytes=int(curate.shard_max_mb * 2**20))
        for doc in iter_jsonl_docs(path):
            was_kept = kind == "data"
            doc.metadata.pop("drop_reason", None)
            _, chain = chains.chain_for(doc)
            reason = chain(doc)
            if reason is None:
                reason = selector.select(doc, weights.get(doc.source, 1.0))
            stats["docs_in"] += 1
            subsets = [stats["per_source"].setdefault(doc.source, _subset())]
            host = url_host(doc.url)
            if host:
                subsets.append(stats["per_domain"].setdefault(host, _subset()))
            for sub in subsets:
                sub["docs_in"] += 1
                sub["kept_before"] += int(was_kept)
                sub["kept_after"] += int(reason is None)
                if reason is not None:
                    sub["dropped"][reason] = sub["dropped"].get(reason, 0) + 1
            if reason is None:
                stats["docs_out"] += 1
                if writer is not None:
                    writer.write(doc)
            else:
                stats["dropped"][reason] = stats["dropped"].get(reason, 0) + 1
                if writer is not None and write_dropped:
                    doc.metadata["drop_reason"] = reason
                    dropped_writer.write(doc)
        if writer is not None:
            writer.close()
            dropped_writer.close()
    stats["filters"] = chains.stats()
    if out is not None:
        write_json(out / "stats.json", stats)
    return stats


def _subset() -> dict[str, Any]:
    return {"docs_in": 0, "kept_before": 0, "kept_after": 0, "dropped": {}}


def format_comparison(stats: dict[str, Any], top_domains: int = 20) -> str:
    """Per source, then for the domains that changed most: documents, kept before and after, new drops."""
    lines = [f"{'source':<24} {'docs':>8} {'kept before':>12} {'kept after':>11}  drops after"]
    for source, s in sorted(stats["per_source"].items()):
        lines.append(_row(source, s))
    changed = sorted(stats.get("per_domain", {}).items(),
                     key=lambda kv: (-abs(kv[1]["kept_after"] - kv[1]["kept_before"]), -kv[1]["docs_in"], kv[0]))
    changed = [(d, s) for d, s in changed if s["kept_after"] != s["kept_before"]][:top_domains]
    if changed:
        lines.append("")
        lines.append(f"{'domain (most changed)':<24} {'docs':>8} {'kept before':>12} {'kept after':>11}  drops after")
        lines.extend(_row(domain, s) for domain, s in changed)
    return "\n".join(lines)


def _row(name: str, s: dict[str, Any]) -> str:
    reasons = ", ".join(f"{r}={n}" for r, n in sorted(s["dropped"].items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{name:<24} {s['docs_in']:>8} {s['kept_before']:>12} {s['kept_after']:>11}  {reasons}"


def main(argv: list[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m lmhpc.curate.rethreshold", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("curate_dir", help="a curate stage's output folder (with data/ and maybe dropped/)")
    p.add_argument("config", help="the config whose curate.filters and curate.selection to apply")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of that config")
    p.add_argument("--out", default=None, help="folder for the re-selected shards")
    p.add_argument("--write-dropped", action="store_true", help="also write the documents now dropped")
    p.add_argument("--dry-run", action="store_true", help="only print what would be kept")
    args = p.parse_args(argv)
    if not args.dry_run and not args.out:
        p.error("--out is needed unless --dry-run")
    out = None if args.dry_run else Path(args.out)
    if out is not None and (out / "data").exists() and any((out / "data").iterdir()):
        p.error(f"{out}/data is not empty")
    try:
        stats = rethreshold(Path(args.curate_dir), Path(args.config), args.overrides, out, args.write_dropped)
    except (ConfigError, FileNotFoundError) as e:
        print(f"rethreshold: {e}", file=sys.stderr)
        return 2
    print(format_comparison(stats))
    print(f"{stats['docs_out']} of {stats['docs_in']} documents kept" + ("" if out is None else f"; wrote {out}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
