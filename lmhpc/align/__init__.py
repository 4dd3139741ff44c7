"""Alignment: the training core every alignment stage shares (:mod:`lmhpc.align.trainer`), LoRA
(:mod:`lmhpc.align.lora`) and the supervised fine-tuning stage ``sft``."""
