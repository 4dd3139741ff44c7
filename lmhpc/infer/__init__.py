"""Inference: text generation with a KV cache (:mod:`lmhpc.infer.generate`) and its command line."""
