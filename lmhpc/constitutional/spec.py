"""The Constitutional AI stages' registration. ``constitutional`` starts from pretrain (or ``init_from``);
``ai_feedback`` judges with the latest of pretrain and sft the run chains (or ``init_from``) and reads the
constitutional stage's prompts unless it names prompt files of its own."""

from lmhpc.constitutional.config import CONSTITUTIONAL_MODELS, FEEDBACK_MODELS, AIFeedbackConfig, ConstitutionalConfig
from lmhpc.stages import StageSpec

SPECS = [
    StageSpec("constitutional", "lmhpc.constitutional.revise", "array", config=ConstitutionalConfig,
              reads=CONSTITUTIONAL_MODELS, order=52, preflight="lmhpc.constitutional.revise:preflight"),
    StageSpec("ai_feedback", "lmhpc.constitutional.feedback", "array", config=AIFeedbackConfig,
              reads=(*FEEDBACK_MODELS, "constitutional"), order=56,
              preflight="lmhpc.constitutional.feedback:preflight"),
]
