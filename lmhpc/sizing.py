"""A sizing model for a real cluster: memory per rank, bytes moved, throughput and checkpoint cadence.

Every formula here is small, written out, and checked against a measurement on a CPU machine at small scale
(``bench/sizing.py``: predicted vs measured, within 20%) before it is extrapolated (``lmhpc size``,
``docs/sizing.md``).

- **Data stages**: dedup's RAM per rank, spilled work files and shuffle bytes are linear in documents
  (:mod:`lmhpc.dedup.sizing`, per-document figures measured by ``bench/dedup.py``); tokenize throughput is
  linear in cores (bytes per CPU-second measured by ``bench/tokenize_throughput.py``).
- **Training memory per rank**: parameters, gradients and AdamW moments (fp32, sharded over tp × pp ×
  dp_shard), the gathered bf16 parameters of the layers FSDP holds unsharded at once, and activations saved for
  the backward pass, counted tensor by tensor for this code base's block (RMSNorm → GQA attention with RoPE →
  RMSNorm → SwiGLU), with and without per-layer activation checkpointing.
- **Checkpoints**: size (fp32 weights + two AdamW moments), save time at a filesystem bandwidth, and the
  interval between checkpoints that minimises lost work for a given preemption rate (Young/Daly:
  ``sqrt(2 × save_time × mean_time_between_preemptions)``).
- **Throughput**: tokens/s = devices × peak FLOP/s × MFU ÷ training FLOPs per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from lmhpc.model.args import ModelArgs
from lmhpc.model.transformer import flops_per_token

GB = 1e9
TB = 1e12
FP32 = 4
BF16 = 2
ADAM_STATES = 2  # exp_avg, exp_avg_sq (fp32)


def param_count(args: ModelArgs) -> int:
    """Parameters of a dense attention model (an embedding tied to the output counts once)."""
    h, f, kv = args.dim, args.hidden_dim, args.kv_heads * args.head_dim
    q = args.n_heads * args.head_dim
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h
    embed = args.vocab_size * h
    return args.n_layers * per_layer + embed * (1 if args.tie_embeddings else 2) + h


def layer_params(args: ModelArgs) -> int:
    h, f, kv = args.dim, args.hidden_dim, args.kv_heads * args.head_dim
    q = args.n_heads * args.head_dim
    return h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h


def activation_bytes_per_token(args: ModelArgs, precision: str = "bf16") -> dict[str, float]:
    """Bytes saved for the backward pass per token: of one block, and of the embedding/final norm/output.

    Counted for this code base's block: the block input and the normed input of each RMSNorm (plus the
    norm's fp32 copies under bf16), RoPE'd q and k, v, the attention output and its log-sum-exp per head, the
    input of ``wo``, and four FFN-wide tensors of SwiGLU (w1 out, silu out, w3 out, their product). The output
    layer adds its normed input and the loss's fp32 log-probabilities (vocab × 4 bytes).
    """
    h, f = args.dim, args.hidden_dim
    kv = args.kv_heads * args.head_dim
    elements = 8 * h + 2 * kv + 4 * f
    scalars = (args.n_heads + 2) * FP32  # attention log-sum-exp per head, two RMSNorm rsqrt
    if precision == "fp32":
        block = elements * FP32 + scalars
        head = 3 * h * FP32
    elif precision == "bf16":
        block = elements * BF16 + 3 * h * FP32 + scalars  # + fp32 copies made by the norms and RoPE
        head = 3 * h * FP32
    else:
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {precision!r}")
    return {"block": float(block), "head": float(head), "loss": float(args.vocab_size * FP32)}


@dataclass
class Layout:
    """A parallel layout: tensor, pipeline, context parallel; data parallel sharded (FSDP) and replicated."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp_shard: int = 1
    dp_replicate: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.pp * self.cp * self.dp_shard * self.dp_replicate


def training_memory(args: ModelArgs, seq_len: int, micro_batch: int, layout: Layout, precision: str = "bf16",
                    recompute: str = "none", fsdp_prefetch_layers: int = 2) -> dict[str, float]:
    """Bytes per rank of a training step at its peak (the end of the forward pass of the last micro-batch).

    - ``state``: fp32 parameters, fp32 gradients, two fp32 AdamW moments, sharded over tp × pp × dp_shard
      (FSDP2 shards them over dp_shard × cp; ours shards over dp_shard, cp ranks hold a dp_shard shard each).
    - ``gathered``: the unsharded parameters of the layers FSDP holds at once (the running one and the
      prefetched one), in the compute precision.
    - ``activations``: tokens of a micro-batch on this rank (micro_batch × seq_len ÷ cp) × bytes per token of
      the rank's layers (÷ tp: heads and FFN columns are split; sequence parallel splits the rest), times the
      micro-batches in flight (pp under 1F1B on the first stage, 1 without pipeline). ``recompute="full"``:
      only each layer's input is kept, plus one layer's activations during its recomputation.
    """
    if recompute not in ("none", "full"):
        raise ValueError(f"recompute must be 'none' or 'full', got {recompute!r}")
    total = param_count(args)
    shards = layout.tp * layout.pp * layout.dp_shard
    state = total * (FP32 + FP32 + ADAM_STATES * FP32) / shards
    compute_bytes = BF16 if precision == "bf16" else FP32
    gathered = min(fsdp_prefetch_layers, args.n_layers) * layer_params(args) * compute_bytes / layout.tp
    if layout.dp_shard == 1:
        gathered = 0.0  # nothing to gather: the parameters are whole on the rank
    per_token = activation_bytes_per_token(args, precision)
    tokens = micro_batch * seq_len / layout.cp
    layers = math.ceil(args.n_layers / layout.pp)
    in_flight = layout.pp if layout.pp > 1 else 1
    act_dtype = compute_bytes
    if recompute == "full":
        per_micro = tokens * (layers * args.dim * act_dtype + per_token["block"] / layout.tp)
    else:
        per_micro = tokens * layers * per_token["block"] / layout.tp
    activations = per_micro * in_flight + tokens * (per_token["head"] + per_token["loss"] / layout.tp)
    return {"params": float(total), "state_bytes": state, "gathered_bytes": gathered,
            "activation_bytes": activations, "total_bytes": state + gathered + activations}


def checkpoint_bytes(args: ModelArgs, optimizer: bool = True) -> float:
    """Bytes of a training checkpoint: fp32 weights and, with ``optimizer``, both AdamW moments."""
    return float(param_count(args) * FP32 * (1 + (ADAM_STATES if optimizer else 0)))


def save_seconds(nbytes: float, ranks: int, fs_bytes_per_s: float, rank_bytes_per_s: float) -> float:
    """Time to write a checkpoint whose shards all ranks write at once: bounded by the filesystem's aggregate
    bandwidth and by what one rank serialises per second (``rank_bytes_per_s``, measured: a distributed
    checkpoint copies, flattens and writes each shard, far below a disk's raw bandwidth)."""
    return max(nbytes / fs_bytes_per_s, nbytes / ranks / rank_bytes_per_s)


def checkpoint_interval_seconds(save_s: float, mean_time_between_preemptions_s: float) -> float:
    """Young/Daly optimum: the interval that minimises save time plus expected lost work."""
    return math.sqrt(2.0 * save_s * mean_time_between_preemptions_s)


def tokens_per_second(args: ModelArgs, seq_len: int, devices: int, peak_flops: float, mfu: float) -> float:
    """Training tokens/s of ``devices`` devices at a model FLOPs utilisation (0-1)."""
    return devices * peak_flops * mfu / flops_per_token(args, seq_len)


def tokenize_hours(text_bytes: float, bytes_per_cpu_s: float, cores: int) -> float:
    """Wall hours to tokenize ``text_bytes`` on ``cores`` cores (linear in cores: shards are independent)."""
    return text_bytes / (bytes_per_cpu_s * cores) / 3600.0


@dataclass
class ClusterPlan:
    """What to size: text to curate and tokenize, a model, a cluster."""

    text_bytes: float = 1 * TB
    args: ModelArgs | None = None
    seq_len: int = 8192
    micro_batch: int = 1
    global_batch_tokens: float = 4e6
    train_tokens: float = 2e12
    layout: Layout | None = None
    precision: str = "bf16"
    recompute: str = "full"
    peak_flops: float = 989e12  # H100/H200 dense bf16
    mfu: float = 0.40
    device_memory_bytes: float = 141 * GB
    fs_bandwidth_bytes_per_s: float = 20 * GB
    checkpoint_rank_bytes_per_s: float = 1 * GB  # one rank's serialisation rate (bench/sizing.py measures a CPU's)
    mean_time_between_preemptions_s: float = 24 * 3600.0
    data_cores: int = 2048
    tokenize_bytes_per_cpu_s: float = 4.0e6
    dedup_ranks: int = 64


def llama_70b() -> ModelArgs:
    """A Llama-2/3-70B-shaped model (GQA 8 KV heads, SwiGLU 28,672, vocab 128,256)."""
    return ModelArgs(vocab_size=128256, dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_hidden=28672,
                     max_seq_len=8192, rope_theta=500000.0)


def size(plan: ClusterPlan, dedup_figures: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sizing table of a plan. ``dedup_figures``: measured per-document figures (bench/results/dedup.json's
    ``memory``) for the dedup rows."""
    args = plan.args or llama_70b()
    layout = plan.layout or Layout(tp=8, pp=4, dp_shard=16)
    mem = training_memory(args, plan.seq_len, plan.micro_batch, layout, plan.precision, plan.recompute)
    ckpt = checkpoint_bytes(args)
    per_rank_ckpt = ckpt / (layout.tp * layout.pp * layout.dp_shard)
    shards = layout.tp * layout.pp * layout.dp_shard
    save_s = save_seconds(ckpt, shards, plan.fs_bandwidth_bytes_per_s, plan.checkpoint_rank_bytes_per_s)
    interval_s = checkpoint_interval_seconds(save_s, plan.mean_time_between_preemptions_s)
    tps = tokens_per_second(args, plan.seq_len, layout.devices, plan.peak_flops, plan.mfu)
    step_s = plan.global_batch_tokens / tps
    out: dict[str, Any] = {
        "model": {"params": param_count(args), "flops_per_token": flops_per_token(args, plan.seq_len),
                  "args": {k: v for k, v in asdict(args).items() if not isinstance(v, dict)}},
        "layout": {**asdict(layout), "devices": layout.devices},
        "memory_per_rank_gb": {"state": mem["state_bytes"] / GB, "gathered": mem["gathered_bytes"] / GB,
                               "activations": mem["activation_bytes"] / GB, "total": mem["total_bytes"] / GB,
                               "fits": mem["total_bytes"] <= 0.9 * plan.device_memory_bytes,
                               "recompute": plan.recompute, "device_gb": plan.device_memory_bytes / GB},
        "checkpoint": {"total_gb": ckpt / GB, "per_rank_gb": per_rank_ckpt / GB, "save_s": save_s,
                       "interval_s": interval_s, "interval_steps": max(1, int(interval_s / step_s)),
                       "fs_bandwidth_gb_s": plan.fs_bandwidth_bytes_per_s / GB,
                       "mtbp_hours": plan.mean_time_between_preemptions_s / 3600},
        "throughput": {"tokens_per_s": tps, "step_s": step_s, "mfu": plan.mfu,
                       "train_days": plan.train_tokens / tps / 86400,
                       "gpu_hours": plan.train_tokens / tps * layout.devices / 3600},
        "tokenize": {"text_tb": plan.text_bytes / TB, "cores": plan.data_cores,
                     "hours": tokenize_hours(plan.text_bytes, plan.tokenize_bytes_per_cpu_s, plan.data_cores)},
    }
    if dedup_figures:
        out["dedup"] = dedup_estimate(dedup_figures, plan.text_bytes, plan.dedup_ranks)
    return out


def dedup_estimate(memory: dict[str, Any], text_bytes: float, ranks: int, measured_ranks: int = 2) -> dict[str, Any]:
    """Dedup at scale from the per-document figures ``bench/dedup.py`` measured (its ``memory`` record): RAM per
    rank = the measured baseline (peak RSS less the exchange arrays) + exchange bytes per document × documents
    per rank; the shuffle sends a share (N−1)/N of the records off-rank."""
    docs = text_bytes / memory["avg_doc_bytes"]
    measured_docs = memory["shuffle_bytes"]["total"] / memory["shuffle_bytes_per_doc"]
    exchange_measured = memory["exchange_peak_bytes_per_doc_per_rank"] * measured_docs / measured_ranks
    baseline = max(memory["peak_rss_mb_by_rank"]) * 2**20 - exchange_measured
    off_rank_per_doc = memory["shuffle_bytes_per_doc"] * measured_ranks / (measured_ranks - 1)
    return {"docs": int(docs), "ranks": ranks,
            "ram_per_rank_gb": (baseline + memory["exchange_peak_bytes_per_doc_per_rank"] * docs / ranks) / GB,
            "rank0_cluster_ram_gb": memory.get("rank0_cluster_bytes_per_doc", 0.0) * docs / GB,
            "work_disk_tb": memory["work_bytes_per_doc"] * docs / TB,
            "shuffle_tb": off_rank_per_doc * (ranks - 1) / ranks * docs / TB}


def format_table(result: dict[str, Any]) -> str:
    """The sizing table as Markdown."""
    m, mem, ck, tp, tok = (result["model"], result["memory_per_rank_gb"], result["checkpoint"],
                           result["throughput"], result["tokenize"])
    lay = result["layout"]
    lines = ["| quantity | value |", "|---|---|",
             f"| model parameters | {m['params'] / 1e9:.1f} B |",
             f"| layout | tp {lay['tp']} × pp {lay['pp']} × cp {lay['cp']} × dp_shard {lay['dp_shard']} × "
             f"dp_replicate {lay['dp_replicate']} = {lay['devices']} devices |",
             f"| memory per rank (recompute {mem['recompute']}) | state {mem['state']:.1f} GB + gathered "
             f"{mem['gathered']:.1f} GB + activations {mem['activations']:.1f} GB = **{mem['total']:.1f} GB** of "
             f"{mem['device_gb']:.0f} GB ({'fits' if mem['fits'] else 'does NOT fit'}) |",
             f"| checkpoint | {ck['total_gb']:.0f} GB ({ck['per_rank_gb']:.2f} GB per rank), save "
             f"{ck['save_s']:.0f} s at {ck['fs_bandwidth_gb_s']:.0f} GB/s |",
             f"| checkpoint interval (preemption every {ck['mtbp_hours']:.0f} h) | {ck['interval_s'] / 60:.0f} min "
             f"= every {ck['interval_steps']} steps |",
             f"| throughput at MFU {tp['mfu']:.0%} | {tp['tokens_per_s']:,.0f} tokens/s, {tp['step_s']:.1f} s/step |",
             f"| training time | {tp['train_days']:.1f} days, {tp['gpu_hours']:,.0f} GPU-hours |",
             f"| tokenize {tok['text_tb']:.1f} TB on {tok['cores']} cores | {tok['hours'] * 60:.1f} min |"]
    if "dedup" in result:
        d = result["dedup"]
        lines.append(f"| dedup {d['docs'] / 1e6:.0f} M docs on {d['ranks']} ranks | {d['ram_per_rank_gb']:.2f} GB RAM "
                     f"per rank (+{d['rank0_cluster_ram_gb']:.2f} GB on rank 0), {d['work_disk_tb']:.2f} TB spill, "
                     f"{d['shuffle_tb']:.2f} TB shuffled |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``lmhpc size``: memory, checkpoint, throughput and data-stage sizing of a model on a cluster."""
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="lmhpc size", description=main.__doc__)
    p.add_argument("--config", help="a run config: size its pretrain model (default: a 70B Llama-shaped model)")
    p.add_argument("--text-tb", type=float, default=1.0)
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--global-batch-tokens", type=float, default=4e6)
    p.add_argument("--train-tokens", type=float, default=2e12)
    p.add_argument("--tp", type=int, default=8)
    p.add_argument("--pp", type=int, default=4)
    p.add_argument("--cp", type=int, default=1)
    p.add_argument("--dp-shard", type=int, default=16)
    p.add_argument("--dp-replicate", type=int, default=1)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--recompute", choices=["none", "full"], default="full")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="per device, dense bf16")
    p.add_argument("--mfu", type=float, default=0.40)
    p.add_argument("--device-gb", type=float, default=141.0)
    p.add_argument("--fs-gb-s", type=float, default=20.0, help="aggregate filesystem write bandwidth")
    p.add_argument("--mtbp-hours", type=float, default=24.0, help="mean time between preemptions")
    p.add_argument("--data-cores", type=int, default=2048)
    p.add_argument("--dedup-ranks", type=int, default=64)
    p.add_argument("--bench-results", default=str(Path(__file__).resolve().parent.parent / "bench" / "results"),
                   help="folder of dedup.json and tokenize.json (measured per-document and per-core figures)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    args = None
    if a.config:
        from lmhpc.config import load_config

        cfg = load_config(a.config)
        args = cfg.pretrain.model
        if not args.vocab_size:
            raise SystemExit("lmhpc size: pretrain.model.vocab_size is 0 (from the tokenizer): set it to size")
    results = Path(a.bench_results)
    dedup = tokenize_rate = None
    if (results / "dedup.json").exists():
        dedup = json.loads((results / "dedup.json").read_text())["lmhpc"]["2"]["memory"]
    if (results / "tokenize.json").exists():
        tokenize_rate = json.loads((results / "tokenize.json").read_text())["results"]["lmhpc"]["mb_per_cpu_s"] * 1e6
    plan = ClusterPlan(text_bytes=a.text_tb * TB, args=args, seq_len=a.seq_len, micro_batch=a.micro_batch,
                       global_batch_tokens=a.global_batch_tokens, train_tokens=a.train_tokens,
                       layout=Layout(a.tp, a.pp, a.cp, a.dp_shard, a.dp_replicate), precision=a.precision,
                       recompute=a.recompute, peak_flops=a.peak_tflops * 1e12, mfu=a.mfu,
                       device_memory_bytes=a.device_gb * GB, fs_bandwidth_bytes_per_s=a.fs_gb_s * GB,
                       mean_time_between_preemptions_s=a.mtbp_hours * 3600, data_cores=a.data_cores,
                       dedup_ranks=a.dedup_ranks, **({"tokenize_bytes_per_cpu_s": tokenize_rate} if tokenize_rate
                                                     else {}))
    result = size(plan, dedup)
    print(json.dumps(result, indent=2, default=str) if a.json else format_table(result))
    return 0
