"""Probe-training ablations: variants of the curated data, a small probe model trained on each, compared."""
