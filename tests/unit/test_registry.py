"""The stage registry: a stage is one package that declares its spec; the core needs no edit for a new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmhpc.config import ConfigError, load_config
from lmhpc.stages import STAGES, RegistryError, StageSpec, check_registry, registry
from tests.conftest import write_config
from tests.helpers import curate_config, write_jsonl_corpus

PLUGIN = {
    "lmhpc_wordcount/__init__.py": '"""A stage outside lmhpc: it counts the words the curate stage kept."""\n',
    "lmhpc_wordcount/spec.py": """
        from dataclasses import dataclass

        from lmhpc.stages import StageSpec


        @dataclass
        class WordCountConfig:
            min_length: int = 1

            def validate(self, root):
                from lmhpc.config import ConfigError

                if self.min_length < 1:
                    raise ConfigError("wordcount.min_length", "must be >= 1")


        SPECS = [StageSpec("wordcount", "lmhpc_wordcount.stage", "single", config=WordCountConfig,
                           reads=("curate",), order=15)]
    """,
    "lmhpc_wordcount/stage.py": """
        from lmhpc.data.writers import iter_jsonl_docs


        def run(ctx):
            words = 0
            for shard in sorted((ctx.inputs["curate"] / "data").glob("part-*.jsonl*")):
                for doc in iter_jsonl_docs(shard):
                    words += sum(len(w) >= ctx.cfg.wordcount.min_length for w in doc.text.split())
            return {"words": words}
    """,
    "lmhpc_wordcount-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: lmhpc-wordcount\nVersion: 0.1\n",
    "lmhpc_wordcount-0.1.dist-info/entry_points.txt": "[lmhpc.stages]\nwordcount = lmhpc_wordcount.spec:SPECS\n",
}


def test_registry_order_and_kinds():
    assert list(registry())[:5] == ["curate", "dedup", "tokenizer", "tokenize", "pretrain"]
    assert STAGES["dedup"].kind == "mpi" and "curate" in STAGES and "nope" not in STAGES


def test_inconsistent_registries_are_refused():
    @__import__("dataclasses").dataclass
    class C:
        pass

    with pytest.raises(RegistryError, match="registered twice"):
        check_registry([StageSpec("a", "m", "single", C), StageSpec("a", "m", "single", C)])
    with pytest.raises(RegistryError, match="reads unknown stage"):
        check_registry([StageSpec("a", "m", "single", C, reads=("b",))])
    with pytest.raises(RegistryError, match="does not come before"):
        check_registry([StageSpec("a", "m", "single", C, reads=("b",), order=1),
                        StageSpec("b", "m", "single", C, order=2)])


def test_config_sections_come_from_the_registry(tmp_path):
    path = write_config(tmp_path / "c.yaml", {"run": {"name": "t"}, "bogus": {"x": 1}})
    with pytest.raises(ConfigError, match=r"'bogus'.*unknown key; known keys here: .*'curate'.*'pretrain'"):
        load_config(path)


def test_a_new_stage_is_one_package(tmp_path):
    """A package outside lmhpc, found through its entry point: config section, reads, order, CLI, run."""
    plugins = tmp_path / "plugins"
    for name, text in PLUGIN.items():
        (plugins / name).parent.mkdir(parents=True, exist_ok=True)
        (plugins / name).write_text(textwrap.dedent(text).lstrip())
    corpus = tmp_path / "corpus"
    write_jsonl_corpus(corpus, files=2, docs_per_file=10)
    cfg = curate_config(tmp_path, corpus)
    cfg["run"]["stages"] = ["curate", "wordcount"]
    cfg["curate"]["filters"] = {"gopher_repetition": {"enabled": False}, "gopher_quality": {"enabled": False},
                                "c4": {"enabled": False}, "fineweb": {"enabled": False}, "language": {"enabled": False}}
    cfg["wordcount"] = {"min_length": 3}
    path = write_config(tmp_path / "c.yaml", cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), str(Path(__file__).resolve().parents[2])])}

    def lmhpc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lmhpc", *args], capture_output=True, text=True, env=env)

    plan = lmhpc("plan", str(path))
    assert plan.returncode == 0, plan.stderr
    assert [line.split()[:3] for line in plan.stdout.splitlines()] == [["curate", "array", "1"],
                                                                       ["wordcount", "single", "1"]]
    bad = lmhpc("run", str(path), "wordcount.min_length=0")
    assert bad.returncode == 2 and "wordcount.min_length" in bad.stderr
    out = lmhpc("run", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    stats = json.loads((tmp_path / "runs" / "t" / "wordcount" / "stats.json").read_text())
    assert stats["words"] > 0
    saved = json.loads((tmp_path / "runs" / "t" / "wordcount" / "config.json").read_text())
    assert saved["wordcount"] == {"min_length": 3}
