#!/usr/bin/env python3
"""Benchmark: lmhpc's dedup stage against datatrove's 4-stage MinHash pipeline, same corpus, one run.

The corpus is the sample corpus (``data/sample``, read with lmhpc's readers) plus planted duplicates
with ground truth (:mod:`lmhpc.dedup.planted`): originals are sample documents of 250+ words that have
no natural near-duplicate in the corpus (Jaccard >= 0.3 by a separate MinHashLSH), each given
duplicates at Jaccard 0.85/0.9/0.95 (edits, insertions, deletions, reorderings), exact copies,
case/whitespace reformats, and near misses at Jaccard 0.3/0.5/0.6. Without ``data/sample`` the
background is synthetic (the result says so).

Both tools read the same curated shards (``part-*.jsonl.zst``) and use the same shingling (word
5-grams of datatrove's ``simplify_text`` normalisation) and the same LSH shape (bands x rows of our
defaults: 14 x 9). Each runs in its own process tree, timed end to end (start-up included), with
its peak memory sampled from /proc (sum over the tree). Precision/recall/F1 are pairwise over the
planted documents; datatrove's clusters come from its ``minhash_cluster_id`` metadata.

    .venv/bin/python bench/dedup.py                       # 1 and 2 ranks vs datatrove on 2 workers
    .venv/bin/python bench/dedup.py --originals 300 --max-docs 5000 --ranks 1,2 --datatrove-workers 1,2
"""

from __future__ import annotations

import sys

# this folder holds a bench/tokenize.py, which must not shadow the standard library's tokenize
if sys.path and sys.path[0] == __file__.rpartition("/")[0]:
    sys.path.pop(0)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lmhpc.data.documents import Document  # noqa: E402
from lmhpc.data.writers import ShardWriter, open_compressed_reader  # noqa: E402
from lmhpc.dedup.config import DedupConfig  # noqa: E402
from lmhpc.dedup.planted import PlantedCorpus, plant, predicted_clusters, score  # noqa: E402
from lmhpc.dedup.settings import DedupSettings  # noqa: E402
from lmhpc.launch.local import venv_tool  # noqa: E402

SEED = 1234


# ------------------------------------------------------------------------------------------ corpus


def load_sample(sample: Path, max_docs: int | None) -> list[Document]:
    """Every readable document of the sample corpus (bad records are skipped), in file order."""
    import tempfile

    from lmhpc.data.inputs import InputSpec
    from lmhpc.data.quarantine import Quarantine
    from lmhpc.data.readers import read_documents

    docs: list[Document] = []
    files = sorted(p for p in sample.glob("*/part-*") if p.is_file() and (".jsonl" in p.name or ".warc" in p.name))
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            spec = InputSpec(path=str(path), source=path.parent.name, format="warc" if ".warc" in path.name else "auto")
            with Quarantine(Path(tmp) / "q.jsonl") as q:
                for doc in read_documents(path, spec, q, default_source=path.parent.name):
                    docs.append(doc)
                    if max_docs and len(docs) >= max_docs:
                        return docs
    return docs


def isolated(docs: list[Document], min_words: int) -> list[int]:
    """Indices of documents with at least ``min_words`` words and no other document at Jaccard >= 0.3
    (datasketch MinHashLSH, independent of both tools under test)."""
    from datasketch import MinHash, MinHashLSH

    from lmhpc.dedup.config import MinHashConfig
    from lmhpc.dedup.normalize import normalize_text
    from lmhpc.dedup.shingles import shingle_hashes

    norm = MinHashConfig().normalize
    lsh = MinHashLSH(threshold=0.3, num_perm=64)
    sketches = []
    for i, d in enumerate(docs):
        values, _ = shingle_hashes([normalize_text(d.text, norm)], "word", 5)
        m = MinHash(num_perm=64, seed=99, hashfunc=int)
        m.update_batch(values.tolist())
        sketches.append(m)
        if len(values):
            lsh.insert(str(i), m)
    return [i for i, d in enumerate(docs)
            if len(d.text.split()) >= min_words and lsh.query(sketches[i]) == [str(i)]]


def build_corpus(sample: Path, originals: int, max_docs: int | None) -> tuple[list[Document], PlantedCorpus, dict]:
    """Background documents plus planted families, shuffled; and what the corpus is."""
    rng = random.Random(SEED)
    if sample.is_dir():
        base = load_sample(sample, max_docs)
        pool = isolated(base, 250)
        chosen = sorted(rng.sample(pool, min(originals, len(pool))))
        planted = plant(len(chosen), seed=SEED, base_texts=[base[i].text for i in chosen])
        taken = set(chosen)
        background = [d for i, d in enumerate(base) if i not in taken]
        about = {"background": f"sample corpus {sample.relative_to(REPO) if sample.is_relative_to(REPO) else sample}",
                 "sample_docs": len(base), "isolated_candidates": len(pool)}
    else:
        planted = plant(originals, seed=SEED, background=max_docs or 5000)
        background = []
        about = {"background": "synthetic (no sample corpus found)"}
    docs = background + planted.docs
    rng.shuffle(docs)
    about.update(docs=len(docs), text_mb=round(sum(len(d.text.encode()) for d in docs) / 2**20, 2),
                 planted_originals=len([p for p in planted.family if "-" not in p]),
                 planted_variants=len(planted.pairs))
    return docs, planted, about


def write_shards(folder: Path, docs: list[Document], shards: int) -> None:
    per = -(-len(docs) // shards)
    for i in range(shards):
        with ShardWriter(folder, f"part-{i:05d}") as w:
            for d in docs[i * per : (i + 1) * per]:
                w.write(d)


# ------------------------------------------------------------------------------------------ measuring


class TreeMemory:
    """Samples the summed RSS of a process and all its descendants from /proc, and their CPU time (each
    process's last seen user+system time, so processes that have exited still count)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak_total = self.peak_single = 0
        self.cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            children: dict[int, list[int]] = {}
            rss: dict[int, int] = {}
            ticks: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as fh:
                        fields = fh.read().rsplit(")", 1)[1].split()
                    children.setdefault(int(fields[1]), []).append(int(entry.name))
                    rss[int(entry.name)] = int(fields[21]) * page
                    ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
                except (OSError, IndexError, ValueError):
                    continue
            tree, stack = [], [self.pid]
            while stack:
                p = stack.pop()
                tree.append(p)
                stack.extend(children.get(p, []))
            sizes = [rss.get(p, 0) for p in tree]
            for p in tree:
                if p in ticks:
                    self.cpu_ticks[p] = max(self.cpu_ticks.get(p, 0), ticks[p])
            self.peak_total = max(self.peak_total, sum(sizes))
            self.peak_single = max(self.peak_single, max(sizes, default=0))
            self._stop.wait(self.interval)


def timed(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; wall time and peak memory of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(proc.pid) as mem:
        out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    cpu = sum(mem.cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "peak_rss_total_mb": round(mem.peak_total / 2**20, 1),
            "peak_rss_largest_process_mb": round(mem.peak_single / 2**20, 1)}


# ------------------------------------------------------------------------------------------ lmhpc


def run_lmhpc(work: Path, ranks: int, corpus: PlantedCorpus) -> dict[str, Any]:
    run = work / f"lmhpc-{ranks}"
    shutil.rmtree(run, ignore_errors=True)
    (run / "runs" / "bench").mkdir(parents=True)
    (run / "runs" / "bench" / "curate").symlink_to(work / "curate")
    config = run / "config.yaml"
    config.write_text(yaml.safe_dump({"run": {"name": "bench", "seed": SEED, "runs_dir": str(run / "runs"),
                                              "stages": ["dedup"]},
                                      "wandb": {"mode": "disabled"}}))
    cmd = [venv_tool("mpiexec"), "-n", str(ranks), sys.executable, "-m", "lmhpc", "stage", "dedup", str(config)]
    result = timed(cmd, {**os.environ, "WANDB_MODE": "disabled"})
    stage = run / "runs" / "bench" / "dedup"
    stats = json.loads((stage / "stats.json").read_text())
    links = []
    for f in sorted((stage / "dropped").glob("*.jsonl.zst")):
        with open_compressed_reader(f) as fh:
            links += [(r["id"], r["kept_id"]) for r in map(json.loads, fh) if "kept_id" in r]
    signed = stats["docs_in"] - stats["quarantined"] - stats["dropped"]["empty"] - stats["kept_without_minhash"]
    return {
        **result,
        "docs_out": stats["docs_out"],
        "removed": {"exact": stats["dropped"]["exact"], "near": stats["dropped"]["near"]},
        "phase_s": stats["seconds"],
        "signatures_per_s_per_core": round(signed / (stats["seconds"]["sign"] * ranks), 1),
        "memory": {k: stats["memory"][k] for k in ("exchange_peak_bytes_per_doc_per_rank", "shuffle_bytes",
                                                   "shuffle_bytes_per_doc", "work_bytes_per_doc", "peak_rss_mb_by_rank",
                                                   "rank0_cluster_bytes_per_doc", "avg_doc_bytes", "estimate_1tb")},
        "near": {k: stats["near"].get(k) for k in ("candidate_pairs", "verified_pairs", "rejected_pairs", "clusters")},
        "quality": score(predicted_clusters(links), corpus),
    }


# ------------------------------------------------------------------------------------------ datatrove


def datatrove_pipeline(spec: dict[str, Any]) -> None:
    """Datatrove's four MinHash stages (signatures, buckets, clusters, filter), timed one by one."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    out = Path(spec["out"])
    cfg = MinhashConfig(n_grams=spec["ngram"], num_buckets=spec["bands"], hashes_per_bucket=spec["rows"],
                        seed=spec["seed"], hash_config=HashConfig(precision=64))
    workers, files = spec["workers"], spec["files"]

    def reader() -> JsonlReader:
        return JsonlReader(spec["data"], glob_pattern="*.jsonl.zst", compression="zstd")

    stages = {
        "1_signatures": LocalPipelineExecutor(
            [reader(), MinhashDedupSignature(output_folder=str(out / "sigs"), config=cfg)],
            tasks=files, workers=workers, logging_dir=str(out / "logs1")),
        "2_buckets": LocalPipelineExecutor(
            [MinhashDedupBuckets(input_folder=str(out / "sigs"), output_folder=str(out / "buckets"), config=cfg)],
            tasks=cfg.num_buckets, workers=workers, logging_dir=str(out / "logs2")),
        "3_clusters": LocalPipelineExecutor(
            [MinhashDedupCluster(input_folder=str(out / "buckets"), output_folder=str(out / "remove"), config=cfg,
                                 save_cluster_id=True)],
            tasks=1, workers=1, logging_dir=str(out / "logs3")),
        "4_filter": LocalPipelineExecutor(
            [reader(), MinhashDedupFilter(input_folder=str(out / "remove"), load_cluster_ids=True,
                                          exclusion_writer=JsonlWriter(str(out / "removed"), compression=None)),
             JsonlWriter(str(out / "kept"), compression=None)],
            tasks=files, workers=workers, logging_dir=str(out / "logs4")),
    }
    seconds = {}
    for name, executor in stages.items():
        t0 = time.perf_counter()
        executor.run()
        seconds[name] = round(time.perf_counter() - t0, 3)
    (out / "seconds.json").write_text(json.dumps(seconds))


def run_datatrove(work: Path, workers: int, settings: DedupSettings, files: int, corpus: PlantedCorpus
                  ) -> dict[str, Any]:
    out = work / f"datatrove-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {"out": str(out), "data": str(work / "curate" / "data"), "ngram": settings.ngram, "bands": settings.bands,
            "rows": settings.rows, "seed": settings.seed, "workers": workers, "files": files}
    (out / "spec.json").write_text(json.dumps(spec))
    result = timed([sys.executable, str(Path(__file__).resolve()), "--datatrove-spec", str(out / "spec.json")])
    seconds = json.loads((out / "seconds.json").read_text())
    cluster_of: dict[str, str] = {}
    kept = removed = 0
    for folder in ("kept", "removed"):
        for f in sorted((out / folder).glob("*.jsonl")):
            for line in f.read_text().splitlines():
                d = json.loads(line)
                kept += folder == "kept"
                removed += folder == "removed"
                cid = d.get("metadata", {}).get("minhash_cluster_id", -1)
                if cid != -1:
                    cluster_of[d["id"]] = f"c{cid}"
    n_docs = kept + removed
    return {
        **result,
        "docs_out": kept,
        "removed": {"near": removed},
        "stage_s": seconds,
        "signatures_per_s_per_core": round(n_docs / (seconds["1_signatures"] * workers), 1),
        "quality": score(cluster_of, corpus),
    }


# ------------------------------------------------------------------------------------------ report


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": cpu, "mem_mb": mem}


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    head = (f"{'run':<17}{'wall s':>8}{'cpu s':>8}{'sig/s/core':>11}{'peak MB':>9}{'kept':>7}{'precision':>10}"
            f"{'recall':>8}{'F1':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        q = r["quality"]
        lines.append(f"{name:<17}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}{r['signatures_per_s_per_core']:>11.0f}"
                     f"{r['peak_rss_total_mb']:>9.0f}{r['docs_out']:>7}{q['precision']:>10.4f}{q['recall']:>8.4f}"
                     f"{q['f1']:>8.4f}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", default=str(REPO / "data" / "sample"))
    p.add_argument("--originals", type=int, default=400, help="planted originals (each with its variants)")
    p.add_argument("--max-docs", type=int, default=None, help="read at most this many sample documents")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--ranks", default="1,2", help="lmhpc MPI ranks to run, comma-separated")
    p.add_argument("--datatrove-workers", default="2", help="datatrove worker counts to run, comma-separated")
    p.add_argument("--work", default=str(REPO / "bench" / "scratch" / "dedup"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "dedup.json"))
    p.add_argument("--datatrove-spec", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.datatrove_spec:
        datatrove_pipeline(json.loads(Path(args.datatrove_spec).read_text()))
        return 0

    load_before = os.getloadavg()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.time()
    docs, corpus, about = build_corpus(Path(args.sample), args.originals, args.max_docs)
    write_shards(work / "curate" / "data", docs, args.shards)
    (work / "curate" / "DONE").write_text("{}\n")
    print(f"corpus: {about} (built in {time.time() - t0:.1f}s)", flush=True)

    settings = DedupSettings.from_config(DedupConfig(), SEED)
    ours = {n: run_lmhpc(work, n, corpus) for n in map(int, args.ranks.split(","))}
    theirs = {n: run_datatrove(work, n, settings, args.shards, corpus)
              for n in map(int, args.datatrove_workers.split(","))}
    rows = [(f"lmhpc {n} rank{'s' * (n > 1)}", r) for n, r in ours.items()]
    rows += [(f"datatrove {n} wkr{'s' * (n > 1)}", r) for n, r in theirs.items()]
    print(table(rows))

    same_cores = sorted(set(ours) & set(theirs))
    ratios = {f"{n}_cores": round(theirs[n]["wall_s"] / ours[n]["wall_s"], 2) for n in same_cores}
    cpu_ratios = {f"{n}_cores": round(theirs[n]["cpu_s"] / ours[n]["cpu_s"], 2) for n in same_cores}
    headline = max(same_cores) if same_cores else None
    result = {
        "benchmark": "dedup",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "corpus": about,
        "settings": {"shingle": "word", "ngram": settings.ngram, "num_perm": settings.num_perm,
                     "bands": settings.bands, "rows": settings.rows, "threshold": settings.threshold,
                     "verify_threshold": settings.verify_threshold if settings.verify else None, "seed": settings.seed,
                     "datatrove_hashes": settings.bands * settings.rows},
        "lmhpc": {str(n): r for n, r in ours.items()},
        "datatrove": {str(n): r for n, r in theirs.items()},
        "ratio_vs_datatrove": ratios[f"{headline}_cores"] if headline else None,
        "ratio_vs_datatrove_by_cores": ratios,
        "cpu_time_ratio_vs_datatrove_by_cores": cpu_ratios,
        "f1_vs_datatrove": {f"{n}_cores": [ours[n]["quality"]["f1"], theirs[n]["quality"]["f1"]] for n in same_cores},
        "lmhpc_scaling_1_to_2_ranks": (round(ours[1]["wall_s"] / ours[2]["wall_s"], 2) if {1, 2} <= set(ours)
                                       else None),
        "versions": {pkg: version(pkg) for pkg in ("datatrove", "datasketch", "numpy", "mpi4py", "mpich", "scipy")},
        "machine": {**machine(), "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio_vs_datatrove: wall {ratios}, cpu time {cpu_ratios}; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
