"""The grpo and ppo stages' registration: each starts from a model (pretrain or sft, or ``<stage>.init_from``);
ppo also reads the reward stage's model when the run chains one."""

from lmhpc.rl.config import HAS_REWARD_STAGE, MODEL_STAGES, REWARD_STAGE, GRPOConfig, PPOConfig
from lmhpc.stages import StageSpec

# the reward stage is read where its package is part of this tree (the registry refuses unknown reads)
_PPO_READS = MODEL_STAGES + ((REWARD_STAGE,) if HAS_REWARD_STAGE else ())

SPECS = [
    StageSpec("ppo", "lmhpc.rl.ppo_stage", "torch", config=PPOConfig, reads=_PPO_READS, order=64),
    StageSpec("grpo", "lmhpc.rl.grpo_stage", "torch", config=GRPOConfig, reads=MODEL_STAGES, order=66),
]
