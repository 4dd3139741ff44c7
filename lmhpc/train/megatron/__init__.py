"""The pretrain stage's Megatron-Core backend (``pretrain.backend: megatron``), for GPU clusters running
NVIDIA's NeMo / PyTorch containers (Transformer Engine, apex optional).

- ``translate``: our ``pretrain`` config → megatron-core's ``TransformerConfig``, GPT layer spec (Transformer
  Engine when it imports, local otherwise), ``OptimizerConfig``, DDP config, LR schedule, micro-batching and
  the ``.bin/.idx`` blend through ``BlendedMegatronDatasetBuilder``; every config key either translates or is
  refused at validation, naming the key;
- ``stage``: the training entry (GPU only): the same stage contract as the torch-native backend.
"""
