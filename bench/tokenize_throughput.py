#!/usr/bin/env python3
"""Benchmark: the tokenize stage end to end (document shards -> Megatron .bin/.idx) against its peers.

On the same documents and the same sentencepiece model (BPE, byte fallback), in one process tree:

* ``spm_limit``: sentencepiece's multithreaded batch encoder on the texts already in memory, same batch
  size and threads, no reading, no writing: the upper bound of any tokenizer front end built on it.
* ``lmhpc``: ``lmhpc stage tokenize`` as a user runs it (one process: a reader thread decompresses and
  parses the zstd shards while sentencepiece encodes; per-source outputs merged; blend and analysis).
* ``megatron_tool``: Megatron-LM's own ``tools/preprocess_data.py`` (``--append-eod``, the same model
  through ``GPTSentencePieceTokenizer``, ``--workers`` = threads) on the same documents as one plain
  ``.jsonl``, when a Megatron-LM checkout is given with ``--megatron-lm``. Its ``.bin`` must hold exactly
  our tokens (the input is written in our output order); the run fails if not.
* ``megatron_core_builder``: when no checkout is given, the same loop written here from the tool's
  description (a ``multiprocessing`` pool encoding one JSON line at a time, megatron-core's
  ``IndexedDatasetBuilder`` writing), labelled as such in the results.

Throughput is UTF-8 text megabytes (10^6 bytes) and tokens per wall-clock second, start-up included for
the commands, and, steadier on a shared machine, megabytes per CPU-second (user + system time of every
process and thread involved). The three run in interleaved rounds (``--repeat``) and the best round of each
counts, since a shared machine's load changes from one measurement to the next. Results go to
``bench/results/tokenize.json``.

    .venv/bin/python bench/tokenize_throughput.py                          # ~30 MB built from this machine's files
    .venv/bin/python bench/tokenize_throughput.py --megatron-lm /path/to/Megatron-LM --megatron-pythonpath /path/to/deps
    .venv/bin/python bench/tokenize_throughput.py --input 'runs/demo/dedup/data/part-*.jsonl.zst' --mb 0
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named like the standard library's ``tokenize``: keep its folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import datetime  # noqa: E402
import glob  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lmhpc.config import load_config  # noqa: E402
from lmhpc.data.documents import Document  # noqa: E402
from lmhpc.data.writers import ShardWriter, iter_jsonl_docs  # noqa: E402
from lmhpc.tokenizer import indexed  # noqa: E402
from lmhpc.tokenizer.config import TokenizerConfig  # noqa: E402
from lmhpc.tokenizer.inputs import safe_name  # noqa: E402
from lmhpc.tokenizer.sampling import SampledDoc, training_lines  # noqa: E402
from lmhpc.tokenizer.training import train_model  # noqa: E402

WORK = REPO / "bench" / "scratch" / "tokenize"
RESULTS = REPO / "bench" / "results" / "tokenize.json"
MB = 1_000_000


# --------------------------------------------------------------------------------------------
# input


def machine_documents(limit_bytes: int) -> list[Document]:
    """Real text found on any Debian machine with Python: the standard library's source (code), package
    documentation and changelogs (docs) and license texts (license), in sorted order, up to ``limit_bytes``."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    groups = {
        "code": sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts),
        "docs": sorted(Path("/usr/share/doc").rglob("changelog*.gz")) + sorted(Path("/usr/share/doc").rglob("README*")),
        "license": sorted(Path("/usr/share/common-licenses").glob("*"))
        + sorted(Path("/usr/share/doc").rglob("copyright")),
    }
    share = {"code": 0.5, "docs": 0.3, "license": 0.2}
    docs: list[Document] = []
    for source, paths in groups.items():
        budget, got = int(limit_bytes * share[source]), 0
        for p in paths:
            if got >= budget:
                break
            try:
                raw = gzip.open(p).read() if p.suffix == ".gz" else p.read_bytes()
            except (OSError, EOFError):
                continue
            text = raw.decode("utf-8", errors="replace")
            if not text.strip() or not p.is_file():
                continue
            docs.append(Document(id=str(p), text=text, source=source))
            got += len(text.encode("utf-8"))
    return docs


def write_dedup_shards(run_dir: Path, docs: list[Document], shard_mb: float) -> None:
    """Lay documents out as the dedup stage's output (zstd JSON-lines shards and its DONE marker)."""
    with ShardWriter(run_dir / "dedup" / "data", "part-00000", max_bytes=int(shard_mb * MB)) as writer:
        for doc in docs:
            writer.write(doc)
    (run_dir / "dedup" / "DONE").write_text("{}\n")


def documents_in_output_order(shards: list[Path]) -> list[Document]:
    """Non-empty documents in the order the stage writes them: per source, in shard then line order."""
    by_source: dict[str, list[Document]] = {}
    for shard in shards:
        for doc in iter_jsonl_docs(shard):
            if doc.text:
                by_source.setdefault(doc.source, []).append(doc)
    return [d for s in sorted(by_source) for d in by_source[s]]


# --------------------------------------------------------------------------------------------
# the measurements


def cpu_seconds() -> float:
    """CPU time (user + system) of this process, its threads and its finished children so far."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure_spm_limit(model: Path, texts: list[str], batch_docs: int, batch_bytes: int, threads: int) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    batches, cur, size = [], [], 0
    for t in texts:
        cur.append(t)
        size += len(t)
        if len(cur) >= batch_docs or size >= batch_bytes:
            batches.append(cur)
            cur, size = [], 0
    if cur:
        batches.append(cur)
    tokens = 0
    t0 = time.perf_counter()
    for batch in batches:
        ids = sp.encode(batch, add_eos=True, num_threads=threads, out_type="numpy")
        tokens += sum(x.shape[0] for x in ids)
    return {"seconds": time.perf_counter() - t0, "tokens": tokens}


def measure_lmhpc(config_path: Path, run_dir: Path) -> dict:
    import shutil

    shutil.rmtree(run_dir / "tokenize", ignore_errors=True)
    env = {**os.environ, "WANDB_MODE": "disabled"}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "lmhpc", "stage", "tokenize", str(config_path)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"lmhpc tokenize failed:\n{res.stderr[-4000:]}")
    stats = json.loads((run_dir / "tokenize" / "stats.json").read_text())
    return {"seconds": seconds, "tokens": stats["tokens"], "encode_s": stats["encode_s"],
            "stage_wall_s": stats["wall_s"]}


def megatron_input(docs: list[Document], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d.text}, ensure_ascii=False) + "\n")


def measure_megatron_tool(checkout: Path, extra_path: str, model: Path, jsonl: Path, out: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(x for x in (str(checkout), extra_path) if x)}
    cmd = [sys.executable, "tools/preprocess_data.py", "--input", str(jsonl), "--output-prefix", str(out),
           "--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", str(model), "--legacy-tokenizer",
           "--append-eod", "--workers", str(workers), "--log-interval", "1000000"]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"Megatron-LM preprocess_data.py failed:\n{res.stderr[-4000:]}")
    prefix = Path(f"{out}_text_document")
    startup = [line for line in res.stdout.splitlines() if line.startswith("Time to startup")]
    return {"seconds": seconds, "tokens": indexed.read_index(f"{prefix}.idx").num_tokens, "prefix": str(prefix),
            "startup_line": startup[0] if startup else None,
            "commit": _git_describe(checkout)}


_SP = None


def _init_worker(model: str) -> None:
    global _SP
    import sentencepiece as spm

    _SP = spm.SentencePieceProcessor(model_file=model)


def _encode_line(line: str) -> list[int]:
    ids = _SP.encode(json.loads(line)["text"])
    if ids:
        ids.append(_SP.eos_id())
    return ids


def measure_core_builder(model: Path, jsonl: Path, out: Path, workers: int) -> dict:
    """preprocess_data.py's loop, written from its description: a pool encodes one line at a time (chunks of
    32), the parent appends each document to megatron-core's IndexedDatasetBuilder."""
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    t0 = time.perf_counter()
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_file=str(model)).get_piece_size()
    builder = IndexedDatasetBuilder(f"{out}.bin", dtype=DType.optimal_dtype(vocab))
    tokens = 0
    with open(jsonl, encoding="utf-8") as fin, multiprocessing.get_context("fork").Pool(
            workers, initializer=_init_worker, initargs=(str(model),)) as pool:
        for ids in pool.imap(_encode_line, fin, 32):
            if ids:
                builder.add_document(torch.tensor(ids), [len(ids)])
                tokens += len(ids)
    builder.finalize(f"{out}.idx")
    return {"seconds": time.perf_counter() - t0, "tokens": tokens, "prefix": str(out)}


# --------------------------------------------------------------------------------------------


def _git_describe(path: Path) -> str | None:
    res = subprocess.run(["git", "-C", str(path), "describe", "--tags", "--always"], capture_output=True, text=True)
    return res.stdout.strip() or None


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg())}


def ensure_tokenizer(docs: list[Document], vocab_size: int, threads: int) -> Path:
    """Train (once, cached under bench/scratch) the model every measurement uses."""
    prefix = WORK / f"spm-bpe-{vocab_size}"
    if Path(f"{prefix}.model").exists():
        return Path(f"{prefix}.model")
    cfg = TokenizerConfig(vocab_size=vocab_size, character_coverage=0.9995)
    sample, got = [], 0
    for i, d in enumerate(docs[:: max(1, len(docs) // 2000)]):  # spread over all sources, about 8 MB
        sample.append(SampledDoc(i, d.id, d.text, d.source, "unknown", len(d.text)))
        got += len(d.text)
        if got > 8 * MB:
            break
    print(f"training the benchmark tokenizer (vocab {vocab_size}) on {got / MB:.1f} MB ...", flush=True)
    return train_model(training_lines(sample, cfg.max_line_bytes), cfg, prefix, vocab_size, threads, seed=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=30.0, help="megabytes of text to build from this machine's files")
    ap.add_argument("--input", default=None, help="glob of document shards to use instead (dedup output format)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--threads", type=int, default=2, help="encode threads (and Megatron workers)")
    ap.add_argument("--shard-mb", type=float, default=8.0, help="uncompressed size of the built shards")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; the best time of each counts")
    ap.add_argument("--megatron-lm", type=Path, default=None, help="a Megatron-LM checkout (tools/preprocess_data.py)")
    ap.add_argument("--megatron-pythonpath", default="", help="extra import path its imports need (e.g. triton)")
    ap.add_argument("--megatron-version", default=None, help="what the checkout is (when it is not a git clone)")
    args = ap.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    host = machine()
    run_dir = WORK / "runs" / "bench"
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
    if args.input:
        src = sorted(glob.glob(args.input))
        if not src:
            raise SystemExit(f"no file matches {args.input}")
        (run_dir / "dedup" / "data").mkdir(parents=True)
        for i, p in enumerate(src):
            shutil.copy(p, run_dir / "dedup" / "data" / f"part-{i:05d}-00000{''.join(Path(p).suffixes[-2:])}")
        (run_dir / "dedup" / "DONE").write_text("{}\n")
    else:
        write_dedup_shards(run_dir, machine_documents(int(args.mb * MB)), args.shard_mb)
    shards = sorted((run_dir / "dedup" / "data").glob("part-*"))
    docs = documents_in_output_order(shards)
    text_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    print(f"input: {len(shards)} shards, {len(docs)} documents, {text_bytes / MB:.1f} MB of text", flush=True)

    model = ensure_tokenizer(docs, args.vocab, args.threads)
    (run_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    shutil.copy(model, run_dir / "tokenizer" / "tokenizer.model")
    (run_dir / "tokenizer" / "DONE").write_text("{}\n")
    config = {
        "run": {"name": "bench", "runs_dir": str(run_dir.parent), "stages": ["tokenize"]},
        "wandb": {"mode": "disabled"},
        "resources": {"tokenize": {"tasks": 1, "cpus_per_task": args.threads}},
        "tokenizer": {"vocab_size": args.vocab},
        "tokenize": {"num_threads": args.threads},
    }
    config_path = WORK / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cfg = load_config(config_path)

    jsonl = WORK / "megatron_input.jsonl"
    megatron_input(docs, jsonl)
    texts = [d.text for d in docs]
    peer = "megatron_tool" if args.megatron_lm else "megatron_core_builder"
    measures = {
        "spm_limit": lambda: measure_spm_limit(model, texts, cfg.tokenize.batch_docs, int(cfg.tokenize.batch_mb * MB),
                                               args.threads),
        "lmhpc": lambda: measure_lmhpc(config_path, run_dir),
        "megatron_tool": lambda: measure_megatron_tool(args.megatron_lm.resolve(), args.megatron_pythonpath, model,
                                                       jsonl, WORK / "megatron_out", args.threads),
        "megatron_core_builder": lambda: measure_core_builder(model, jsonl, WORK / "core_builder_out", args.threads),
    }
    # interleaved rounds, best of each: the machine may be shared, and load changes between measurements
    runs: dict[str, list[dict]] = {"spm_limit": [], "lmhpc": [], peer: []}
    for round_ in range(args.repeat):
        for name in runs:
            print(f"round {round_ + 1}/{args.repeat}: {name} ...", flush=True)
            cpu0 = cpu_seconds()
            r = measures[name]()
            r["cpu_seconds"] = round(cpu_seconds() - cpu0, 3)
            r["load_1min_after"] = round(os.getloadavg()[0], 2)
            runs[name].append(r)
    results = {name: dict(min(rs, key=lambda r: r["seconds"]), all_seconds=[round(r["seconds"], 3) for r in rs],
                          all_cpu_seconds=[r["cpu_seconds"] for r in rs],
                          all_load_1min_after=[r["load_1min_after"] for r in rs]) for name, rs in runs.items()}
    ours = [run_dir / "tokenize" / f"{safe_name(s)}" for s in sorted({d.source for d in docs})]
    ours_tokens = np.concatenate([np.fromfile(f"{p}.bin", dtype=indexed.read_index(f"{p}.idx").dtype) for p in ours])
    theirs = indexed.IndexedDatasetReader(results[peer]["prefix"])
    their_tokens = np.fromfile(f"{results[peer]['prefix']}.bin", dtype=theirs.index.dtype)
    same = bool(np.array_equal(ours_tokens.astype(np.int64), their_tokens.astype(np.int64)))
    if not same:
        raise SystemExit(f"{peer} wrote different tokens than lmhpc: the comparison is void")

    table = {}
    for name, r in results.items():
        r["mb_per_s"] = round(text_bytes / MB / r["seconds"], 3)
        r["tokens_per_s"] = round(r["tokens"] / r["seconds"], 1)
        r["mb_per_cpu_s"] = round(text_bytes / MB / min(r["all_cpu_seconds"]), 3)  # steadier under shared load
        r["seconds"] = round(r["seconds"], 3)
        if "prefix" in r:
            r["prefix"] = os.path.relpath(r["prefix"], REPO)  # the results name no machine paths
        table[name] = r
    out = {
        "benchmark": "tokenize",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "input": {"documents": len(docs), "text_mb": round(text_bytes / MB, 3), "shards": len(shards),
                  "source": args.input or f"built from this machine's files (--mb {args.mb})"},
        "tokenizer": {"type": "sentencepiece bpe, byte fallback", "vocab_size": args.vocab},
        "threads": args.threads,
        "rounds": args.repeat,
        "results": table,
        "ratio_vs_spm_limit": round(table["lmhpc"]["mb_per_s"] / table["spm_limit"]["mb_per_s"], 3),
        f"ratio_vs_{peer}": round(table["lmhpc"]["mb_per_s"] / table[peer]["mb_per_s"], 3),
        "cpu_time_ratio_vs_spm_limit": round(table["lmhpc"]["mb_per_cpu_s"] / table["spm_limit"]["mb_per_cpu_s"], 3),
        f"cpu_time_ratio_vs_{peer}": round(table["lmhpc"]["mb_per_cpu_s"] / table[peer]["mb_per_cpu_s"], 3),
        "peer": peer,
        "tokens_identical_to_peer": same,
        "machine": {**host, "load_average_at_end": list(os.getloadavg())},
        "versions": {p: version(p) for p in ("sentencepiece", "megatron-core", "numpy", "zstandard")},
        "command": " ".join(["python", "bench/tokenize_throughput.py", *sys.argv[1:]]),
    }
    if peer == "megatron_tool":
        out["ratio_vs_megatron"] = out[f"ratio_vs_{peer}"]
        out["versions"]["Megatron-LM"] = args.megatron_version or table[peer].get("commit")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'':<24}{'seconds':>9}{'MB/s':>9}{'tokens/s':>12}{'MB/CPU-s':>10}")
    for name, r in table.items():
        print(f"{name:<24}{r['seconds']:>9.2f}{r['mb_per_s']:>9.2f}{r['tokens_per_s']:>12.0f}{r['mb_per_cpu_s']:>10.2f}")
    print(f"\nratio_vs_spm_limit {out['ratio_vs_spm_limit']}   ratio_vs_{peer} {out[f'ratio_vs_{peer}']}   "
          f"(load average {out['machine']['load_average_at_start']} -> {out['machine']['load_average_at_end']})")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
