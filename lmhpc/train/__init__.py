"""The pretrain stage, torch-native backend (CPU with gloo, GPUs with NCCL).

- ``config``: the ``pretrain`` config section and its validation;
- ``data``: megatron-core's blended GPT dataset over the tokenize stage's ``.bin/.idx`` files;
- ``parallel``: device mesh, TP/SP, all-gather-KV context parallel, pipeline stages, FSDP2/HSDP/DDP;
- ``materialize``: the model built on the meta device, sharded, then each rank's shards allocated and
  initialised (the values of the whole model built in one process);
- ``optim``: AdamW with μP parameter groups, warmup + cosine/WSD schedule;
- ``loop``: one optimizer step (micro-batches or pipeline schedule, clipping, spike guard);
- ``checkpoint``: DCP step folders with a completion marker, resume and resharding;
- ``metrics``: tokens/s, MFU, memory, ``metrics.jsonl``;
- ``stage``: ``run(ctx)``, which ties them together with preemption handling;
- ``megatron``: the Megatron-Core backend (``backend: megatron``, GPU clusters): config translation and its
  training entry, with the same stage contract.
"""
