"""Medusa-1: extra decoding heads on a frozen model, trained by the ``medusa`` stage, decoded with tree attention."""
