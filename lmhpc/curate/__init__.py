"""Curate stage: read raw collections, validate, filter, select and shard them."""
