"""The grpo and ppo stages' registration: each starts from a model (pretrain or sft, or ``<stage>.init_from``);
ppo also reads the reward stage's model when the run chains one."""

from lmhpc.rl.config import MODEL_STAGES, GRPOConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("grpo", "lmhpc.rl.grpo_stage", "torch", config=GRPOConfig, reads=MODEL_STAGES, order=66),
]
