"""The reference stage: the frozen reference model's log-probs of every chosen and rejected response, computed once.

The reference model is the model dpo starts from (``dpo.init_from``, or the latest of pretrain, sft that the run
chains) and the pairs are dpo's (``dpo.data`` and the ai_feedback stage's pairs, ``dpo.train.max_len``, packed as
dpo packs them: ``dpo.packing``). The pairs are split over the ranks (``index % world``), ``reference.batch_size``
per forward pass; rank 0 gathers and writes, in ``<run>/reference/``:

- ``logps.npz``: ``chosen``, ``rejected`` (float32 summed log-probs of the response tokens, end token included)
  and ``chosen_tokens``, ``rejected_tokens`` (int64), indexed by pair index;
- ``reference.json``: fingerprints of the tokenized data and of the model's weights (dpo refuses log-probs of
  other inputs), the model's source, counts;
- ``quarantine/pairs.jsonl``: bad records by reason.

A preemption signal stops the pass between batches (the job is requeued and computes again from the start: one
pass is short next to the training that follows).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lmhpc.context import StageContext
from lmhpc.exchange.load import build_model, read_weights, weights_tokenizer
from lmhpc.exchange.source import model_source
from lmhpc.launch.preempt import Preempted
from lmhpc.preference.common import (
    ReferenceLogps,
    preference_files,
    read_preference_data,
    weights_fingerprint,
    write_reference,
)
from lmhpc.preference.config import MODEL_STAGES, DpoConfig, ReferenceConfig
from lmhpc.preference.data import collate_pairs, pad_id_of
from lmhpc.preference.logps import batch_scores, packed_scores, split_pairs
from lmhpc.preference.packing import pack_pairs, use_shared_prompt_attention
from lmhpc.train.metrics import memory_stats
from lmhpc.train.stage import init_distributed, pick_device

log = logging.getLogger("lmhpc.reference")


def run(ctx: StageContext) -> dict[str, Any]:
    cfg: ReferenceConfig = ctx.cfg.reference
    dpo: DpoConfig = ctx.cfg.dpo
    device = pick_device(cfg.device, ctx.local_rank)
    created = init_distributed(ctx.rank, ctx.world_size, device)
    try:
        return _score(ctx, cfg, dpo, device)
    finally:
        if created:
            dist.destroy_process_group()


def _score(ctx: StageContext, cfg: ReferenceConfig, dpo: DpoConfig, device: torch.device) -> dict[str, Any]:
    t0 = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    source = model_source(ctx, dpo.init_from, MODEL_STAGES)
    weights = read_weights(source)
    fingerprint = weights_fingerprint(weights)
    tokenizer = weights_tokenizer(weights)
    if dpo.train.max_len > weights.args.max_seq_len:
        raise ValueError(f"dpo.train.max_len={dpo.train.max_len} exceeds the model's max_seq_len "
                         f"{weights.args.max_seq_len} ({source})")
    model = build_model(weights).to(device)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    for param in model.parameters():
        param.requires_grad_(False)
        param.data = param.data.to(dtype)
    model.eval()
    if dpo.packing:
        use_shared_prompt_attention(model)
    del weights
    files = preference_files(ctx, dpo.data, "dpo")
    data = read_preference_data(ctx, files, tokenizer, dpo.train.max_len, rank)
    pad_id = pad_id_of(tokenizer)
    mine = data.pairs[rank::world]
    log.info("reference: %d pairs (%d quarantined) from %d files, %d on this rank, model %s", len(data.pairs),
             sum(data.quarantined.values()), len(files), len(mine), source)
    out: dict[int, tuple[float, float, int, int]] = {}
    with torch.no_grad():
        for start in range(0, len(mine), cfg.batch_size):
            if ctx.should_stop():
                raise Preempted(f"preemption signal after {start} of this rank's {len(mine)} pairs")
            chunk = mine[start:start + cfg.batch_size]
            if dpo.packing:
                packed = {k: v.to(device) for k, v in pack_pairs(chunk).items()}
                chosen, rejected = split_pairs(packed_scores(model, packed, stats=False))
            else:
                chosen, rejected = split_pairs(batch_scores(model, collate_pairs(chunk, pad_id).to(device),
                                                            stats=False))
            for i, p in enumerate(chunk):
                out[p.index] = (float(chosen.logps[i]), float(rejected.logps[i]), int(chosen.tokens[i]),
                                int(rejected.tokens[i]))
    gathered: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, out)
    else:
        gathered = [out]
    n = len(data.pairs)
    ref = ReferenceLogps(np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.int64),
                         np.zeros(n, np.int64), {})
    for part in gathered:
        for i, (c, r, ct, rt) in part.items():
            ref.chosen[i], ref.rejected[i], ref.chosen_tokens[i], ref.rejected_tokens[i] = c, r, ct, rt
    if int((ref.chosen_tokens > 0).sum()) != n:
        raise RuntimeError("some pairs were scored by no rank")
    ref.meta = {"pairs": n, "data_fingerprint": data.fingerprint(), "model_fingerprint": fingerprint,
                "model_source": str(source), "data_files": [str(f) for f in files], "dtype": cfg.dtype,
                "max_len": dpo.train.max_len}
    if rank == 0:
        write_reference(ctx.stage_dir, ref)
    seconds = time.time() - t0
    return {
        "docs_in": data.records_in,
        "docs_out": n,
        "quarantined": sum(data.quarantined.values()),
        "quarantine_reasons": data.quarantined,
        "dropped": {},
        "pairs": n,
        "response_tokens": int(ref.chosen_tokens.sum() + ref.rejected_tokens.sum()),
        "mean_logps_chosen": float(ref.chosen.mean()),
        "mean_logps_rejected": float(ref.rejected.mean()),
        "model_source": str(source),
        "model_fingerprint": fingerprint,
        "data_fingerprint": ref.meta["data_fingerprint"],
        "world_size": world,
        "device": str(device),
        "seconds": round(seconds, 3),
        "pairs_per_s": round(n / seconds, 2) if seconds else None,
        "memory": memory_stats(device),
    }
