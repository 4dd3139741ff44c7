"""Reinforcement learning from rewards: the ``ppo`` and ``grpo`` stages, their rollouts, losses and verifiable
reward functions."""
