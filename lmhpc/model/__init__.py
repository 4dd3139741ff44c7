"""Plain PyTorch models (no parallelism inside): the Llama-style transformer, MoE FFN, Mamba mixer."""
