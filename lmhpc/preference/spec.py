"""The preference stages' registration. reference and dpo start from the same model (``dpo.init_from`` or the
latest of pretrain, sft that the run chains); reward from its own. Each also reads the ai_feedback stage's pairs
when the run chains it."""

from lmhpc.preference.config import DATA_READS, MODEL_STAGES, REFERENCE, DpoConfig, ReferenceConfig, RewardConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec(REFERENCE, "lmhpc.preference.reference", "torch", config=ReferenceConfig,
              reads=MODEL_STAGES + DATA_READS, order=58),
    StageSpec("dpo", "lmhpc.preference.dpo", "torch", config=DpoConfig,
              reads=MODEL_STAGES + DATA_READS + (REFERENCE,), order=60),
    StageSpec("reward", "lmhpc.preference.reward", "torch", config=RewardConfig, reads=MODEL_STAGES + DATA_READS,
              order=62),
]
