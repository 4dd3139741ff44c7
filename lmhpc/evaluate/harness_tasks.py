"""lm-evaluation-harness's own task configs, pointed at the benchmark data we ship instead of the Hub.

For each task of :data:`~lmhpc.evaluate.tasks.TASKS`, ``write_local_tasks`` writes the first documents of the
split as a jsonl file and a YAML that includes the harness's config of that task and replaces only its data
source (``dataset_path: json``). ``TaskManager(include_path=folder, include_defaults=False)`` then runs the
harness's prompts and metrics offline, on exactly the items our stage scores.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmhpc.evaluate.tasks import TASKS

HARNESS_CONFIGS = {
    "hellaswag": "hellaswag/hellaswag.yaml", "arc_easy": "arc/arc_easy.yaml", "arc_challenge": "arc/arc_challenge.yaml",
    "piqa": "piqa/piqa.yaml", "openbookqa": "openbookqa/openbookqa.yaml", "sciq": "sciq/sciq.yaml",
    "winogrande": "winogrande/default.yaml", "copa": "super_glue/copa/default.yaml",
    "boolq": "super_glue/boolq/default.yaml", "commonsense_qa": "commonsense_qa/default.yaml",
}


def harness_config(name: str) -> Path:
    """The harness's YAML for one of our tasks."""
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / HARNESS_CONFIGS[name]


def harness_doc(name: str, doc: dict) -> dict:
    """A document as the harness's config reads it (BoolQ: SuperGLUE's integer label from the boolean answer)."""
    if name == "boolq" and "label" not in doc:
        return {**doc, "label": int(str(doc["answer"]).lower() == "true")}
    return doc


def write_local_tasks(names: list[str], data_dir: Path, limit: int, folder: Path) -> list[str]:
    """Task YAMLs (and their data) in ``folder`` for ``names``; returns the task names to run."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        docs = TASKS[name].items(data_dir, limit)
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(harness_doc(name, d)) + "\n" for d in docs), encoding="utf-8")
        override = {"include": str(harness_config(name)), "task": name, "dataset_path": "json",
                    "dataset_name": None, "dataset_kwargs": {"data_files": {"validation": str(data)}},
                    "training_split": None, "test_split": None, "validation_split": "validation"}
        (folder / f"{name}.yaml").write_text(json.dumps(override, indent=1) + "\n")  # JSON is YAML
    return list(names)
