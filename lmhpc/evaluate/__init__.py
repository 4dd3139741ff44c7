"""The evaluate stage: perplexity (per token, bits per byte, per source), multiple-choice benchmarks scored as
lm-evaluation-harness scores them, and an lm-evaluation-harness model adapter for our checkpoints."""
