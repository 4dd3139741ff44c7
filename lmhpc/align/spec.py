"""The sft stage's registration: it starts from a model (pretrain, or ``sft.init_from``) and, when the run chains
the constitutional stage, also trains on its revisions (``sft.jsonl``)."""

import importlib.util

from lmhpc.align.config import CONSTITUTIONAL, MODEL_STAGES, SftConfig
from lmhpc.stages import StageSpec

# the constitutional stage is read where its package is part of this tree (the registry refuses unknown reads)
_READS = MODEL_STAGES + ((CONSTITUTIONAL,) if importlib.util.find_spec("lmhpc.constitutional.spec") else ())

SPECS = [
    StageSpec("sft", "lmhpc.align.sft", "torch", config=SftConfig, reads=_READS, order=54),
]
