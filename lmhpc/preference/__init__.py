"""Preference optimisation stages: reference log-probs, the DPO family and the Bradley-Terry reward model,
on preference pairs ``{"prompt", "chosen", "rejected"}``."""
