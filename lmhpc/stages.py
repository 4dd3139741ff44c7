"""The stage registry: every stage a run can chain, found where it is declared.

A stage is one package that declares its :class:`StageSpec` in one place, its ``spec.py``
(``SPECS = [StageSpec(...)]``): name, kind, the stages it reads, its config dataclass (the
``<name>:`` section of the run config) and its position in the chain. The registry imports every
``lmhpc/<package>/spec.py`` and every ``lmhpc.stages`` entry point of installed distributions
(``module:SPECS``), so a new stage needs no edit of the core: the root config, the pipeline order,
the CLI and the launchers are built from what is registered here.

kinds:
- ``array``: independent units (input shards) spread over tasks (``index % tasks``): a SLURM array or
  local subprocesses, then one finalize step that merges the per-unit stats. The module defines
  ``units(ctx) -> list[str]``, ``process_unit(ctx, index, unit) -> dict``, optionally
  ``finalize(ctx, stats) -> dict`` and ``unit_file(ctx, unit) -> Path | None`` (the input file a unit
  reads, whose size and modification time are frozen with the unit list).
- ``mpi``: one job of N MPI ranks that talk (``mpiexec -n N`` / ``srun --mpi=pmi2``); ``run(ctx) -> dict``.
- ``torch``: one job of N torch.distributed processes (N local processes with RANK/WORLD_SIZE set / one SLURM
  task per GPU with submitit's TorchDistributedEnvironment); ``run(ctx) -> dict``.
- ``single``: one process; ``run(ctx) -> dict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lmhpc.config import RunConfig

StageKind = Literal["array", "mpi", "torch", "single"]
KINDS = ("array", "mpi", "torch", "single")
SPEC_MODULE = "spec"  # lmhpc/<package>/spec.py
ENTRY_POINT_GROUP = "lmhpc.stages"


@dataclass(frozen=True)
class StageSpec:
    """What the core knows of a stage.

    - ``module``: the module holding the stage's functions; imported only when the stage runs.
    - ``config``: the dataclass of the ``<name>:`` config section (its ``validate(root)`` runs at load;
      a class attribute ``fingerprint_ignore`` lists dotted keys that do not change the stage's output).
    - ``reads``: the stages whose output it reads, found at run time as ``ctx.inputs[name]``; the config
      section may narrow them with ``stage_reads(default) -> tuple`` (e.g. dedup on raw inputs reads none).
    - ``order``: position in the chain (stages sort by it; a stage sorts after every stage it reads).
    - ``preflight``: ``"module:function"`` called as ``function(cfg) -> list[str]`` before anything is
      submitted (inputs that cannot be read, say); each returned line is a problem that stops the launch.
    """

    name: str
    module: str
    kind: StageKind
    config: type
    reads: tuple[str, ...] = ()
    order: int = 100
    preflight: str | None = None

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)

    def reads_for(self, cfg: RunConfig) -> tuple[str, ...]:
        """The stages this stage reads under this config: the section's ``stage_reads(default)`` or
        ``stage_reads(default, root)`` narrows ``reads`` (it may only drop stages, never add one)."""
        section = cfg.section(self.name)
        narrow = getattr(section, "stage_reads", None)
        if not callable(narrow):
            return self.reads
        if len(inspect.signature(narrow).parameters) >= 2:
            chosen = tuple(narrow(self.reads, cfg))
        else:
            chosen = tuple(narrow(self.reads))
        extra = [s for s in chosen if s not in self.reads]
        if extra:
            raise RegistryError(f"stage '{self.name}': stage_reads added {extra}, which its spec does not read")
        return chosen

    def run_preflight(self, cfg: RunConfig) -> list[str]:
        if not self.preflight:
            return []
        module, func = self.preflight.split(":", 1)
        return list(getattr(importlib.import_module(module), func)(cfg))


class RegistryError(RuntimeError):
    """Two stages share a name, a stage reads an unknown stage, or the order contradicts ``reads``."""


def _package_specs() -> list[StageSpec]:
    import lmhpc

    specs: list[StageSpec] = []
    for info in sorted(pkgutil.iter_modules(lmhpc.__path__), key=lambda i: i.name):
        if not info.ispkg:
            continue
        name = f"lmhpc.{info.name}.{SPEC_MODULE}"
        if importlib.util.find_spec(name) is None:
            continue
        specs += list(importlib.import_module(name).SPECS)
    return specs


def _entry_point_specs() -> list[StageSpec]:
    from importlib.metadata import entry_points

    specs: list[StageSpec] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        specs += list(ep.load())
    return specs


def check_registry(specs: list[StageSpec]) -> dict[str, StageSpec]:
    """Stages by name in chain order; raises :class:`RegistryError` on an inconsistent registry."""
    by_name: dict[str, StageSpec] = {}
    for spec in specs:
        if spec.name in by_name:
            raise RegistryError(f"stage '{spec.name}' is registered twice ({by_name[spec.name].module}, {spec.module})")
        if spec.kind not in KINDS:
            raise RegistryError(f"stage '{spec.name}': unknown kind {spec.kind!r}; kinds: {KINDS}")
        by_name[spec.name] = spec
    ordered_specs = sorted(by_name.values(), key=lambda s: (s.order, s.name))
    position = {s.name: i for i, s in enumerate(ordered_specs)}
    for spec in ordered_specs:
        for needed in spec.reads:
            if needed not in by_name:
                raise RegistryError(f"stage '{spec.name}' reads unknown stage '{needed}'")
            if position[needed] >= position[spec.name]:
                raise RegistryError(f"stage '{spec.name}' (order {spec.order}) reads '{needed}' "
                                    f"(order {by_name[needed].order}), which does not come before it")
    return {s.name: s for s in ordered_specs}


@lru_cache(maxsize=1)
def registry() -> dict[str, StageSpec]:
    """Every registered stage by name, in chain order."""
    return check_registry(_package_specs() + _entry_point_specs())


class _Stages:
    """``STAGES[name]``, ``name in STAGES``, iteration in chain order: a view of :func:`registry`."""

    def __getitem__(self, name: str) -> StageSpec:
        return registry()[name]

    def __contains__(self, name: object) -> bool:
        return name in registry()

    def __iter__(self) -> Any:
        return iter(registry())

    def __len__(self) -> int:
        return len(registry())

    def get(self, name: str, default: StageSpec | None = None) -> StageSpec | None:
        return registry().get(name, default)

    def values(self) -> Any:
        return registry().values()


STAGES = _Stages()


def stage_order() -> tuple[str, ...]:
    """Every registered stage name, in chain order."""
    return tuple(registry())


def ordered(names: list[str]) -> list[str]:
    """The given stage names in chain order."""
    return [s for s in registry() if s in names]


def in_run(names: tuple[str, ...], cfg: RunConfig) -> tuple[str, ...]:
    """Those of ``names`` that the run chains (``run.stages``): for ``stage_reads`` of a stage whose inputs are
    optional (evaluate scores every model stage the run has)."""
    return tuple(n for n in names if n in cfg.run.stages)


def last_in_run(candidates: tuple[str, ...], cfg: RunConfig) -> str | None:
    """The latest (in chain order) of ``candidates`` that the run chains, or None."""
    present = [n for n in stage_order() if n in candidates and n in cfg.run.stages]
    return present[-1] if present else None


def dependants(name: str, within: list[str] | None = None, cfg: RunConfig | None = None) -> list[str]:
    """Stages that read ``name``, directly or through others (limited to ``within`` when given)."""
    out: list[str] = []
    affected = {name}
    for spec in registry().values():
        reads = spec.reads_for(cfg) if cfg is not None else spec.reads
        if spec.name != name and affected.intersection(reads):
            affected.add(spec.name)
            if within is None or spec.name in within:
                out.append(spec.name)
    return out
