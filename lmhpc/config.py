"""Typed run configuration: dataclasses loaded from YAML, dotted overrides, validation.

Every section of the config tree is a dataclass. ``load_config`` reads a YAML file, applies
``key.sub=value`` overrides, builds the tree with type checks, then runs every section's
``validate(root)``. Any problem raises :class:`ConfigError` naming the key and the file, before
anything is submitted.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmhpc.curate.config import CurateConfig
from lmhpc.dedup.config import DedupConfig
from lmhpc.tokenizer.config import TokenizeConfig, TokenizerConfig
from lmhpc.train.config import PretrainConfig

SECRET_MARKERS = ("api_key", "apikey", "token", "password", "secret")


class ConfigError(ValueError):
    """A config value is unknown, mistyped or impossible. Names the key and the file."""

    def __init__(self, key: str, message: str, file: str | Path | None = None):
        self.key = key
        self.file = str(file) if file else None
        where = f" in {self.file}" if self.file else ""
        super().__init__(f"config key '{key}'{where}: {message}")


@dataclass
class RunSection:
    """Identity of a run: its name, seed, where run folders live and which stages it chains."""

    name: str = "demo"
    seed: int = 1234
    runs_dir: str = "runs"
    stages: list[str] = field(default_factory=lambda: ["curate"])

    def validate(self, root: RunConfig) -> None:
        from lmhpc.stages import STAGE_ORDER

        if not self.name or any(c in self.name for c in "/\\\n\r\t '\"$`;&|<>*?") or self.name.startswith("."):
            raise ConfigError("run.name", f"{self.name!r} must be a plain name (letters, digits, - _ .)")
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        if unknown:
            raise ConfigError("run.stages", f"unknown stage(s) {unknown}; known: {list(STAGE_ORDER)}")
        if len(set(self.stages)) != len(self.stages):
            raise ConfigError("run.stages", "a stage is listed twice")
        if not self.stages:
            raise ConfigError("run.stages", "no stage to run")


@dataclass
class Resources:
    """Placement of one stage: ranks, nodes, GPUs and SLURM limits."""

    tasks: int = 1  # array tasks (array stages), MPI ranks (mpi stages), processes per node (torch)
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 4.0
    timeout_min: int = 60
    array_parallelism: int = 64
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_requeues: int = 3

    def validate_at(self, key: str) -> None:
        for name in ("tasks", "nodes", "cpus_per_task", "timeout_min", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}", "must be >= 1")
        if self.gpus_per_node < 0:
            raise ConfigError(f"{key}.gpus_per_node", "must be >= 0")
        if self.mem_gb <= 0:
            raise ConfigError(f"{key}.mem_gb", "must be > 0")
        if self.max_requeues < 0:
            raise ConfigError(f"{key}.max_requeues", "must be >= 0")


@dataclass
class ExecutorConfig:
    """Where stages run. ``profile`` names a cluster profile YAML (slurm/profiles/*.yaml)."""

    kind: Literal["local", "slurm"] = "local"
    profile: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    container: str | None = None
    container_mounts: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    python: str | None = None  # interpreter the jobs run; default: the one running lmhpc
    mpi: str = "pmi2"
    signal_delay_s: int = 90
    env: dict[str, str] = field(default_factory=dict)

    def validate(self, root: RunConfig) -> None:
        for key in ("partition", "account", "qos", "container", "python", "mpi"):
            value = getattr(self, key)
            if value is not None and any(c in value for c in "\n\r\0"):
                raise ConfigError(f"executor.{key}", "must not contain a newline or NUL")
        for name, value in self.env.items():
            if not name.isidentifier():
                raise ConfigError(f"executor.env.{name}", "not a valid environment variable name")
            if any(m in name.lower() for m in SECRET_MARKERS):
                raise ConfigError(
                    f"executor.env.{name}",
                    "secrets must not be written into configs or scripts; export it in the environment",
                )
            if "\0" in value:
                raise ConfigError(f"executor.env.{name}", "must not contain NUL")
        if self.signal_delay_s < 0:
            raise ConfigError("executor.signal_delay_s", "must be >= 0")


@dataclass
class WandbConfig:
    """Weights & Biases tracking. ``mode`` is offline unless the user asks otherwise."""

    project: str = "lmhpc"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    """The whole config tree of one run."""

    run: RunSection = field(default_factory=RunSection)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    resources: dict[str, Resources] = field(default_factory=dict)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    # where it came from (not part of the YAML)
    source_file: str | None = field(default=None, compare=False)
    base_dir: str = field(default=".", compare=False)

    @property
    def run_dir(self) -> Path:
        return self.path(self.run.runs_dir) / self.run.name

    def path(self, p: str | Path) -> Path:
        """Resolve a path from the config: relative paths are relative to the config file's folder."""
        p = Path(p).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    def resources_for(self, stage: str) -> Resources:
        return self.resources.get(stage, Resources())


# --------------------------------------------------------------------------------------------
# building dataclasses from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, file: str | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, file)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}", file)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {list(args)}, got {value!r}", file)
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}", file)
        return build(tp, value, key, file)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {type(value).__name__} {value!r}", file)
        item_tp = args[0] if args else Any
        return [_coerce(v, item_tp, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}", file)
        ktp, vtp = args if args else (Any, Any)
        return {str(k): _coerce(v, vtp, f"{key}.{k}", file) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true/false, got {value!r}", file)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {value!r}", file)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, f"expected a number, got {value!r}", file)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {type(value).__name__} {value!r}", file)
    return value


def build(cls: type, data: dict[str, Any], prefix: str = "", file: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields or k in ("source_file", "base_dir"):
            known = sorted(n for n in fields if n not in ("source_file", "base_dir"))
            raise ConfigError(key, f"unknown key; known keys here: {known}", file)
        kwargs[k] = _coerce(v, hints[k], key, file)
    return cls(**kwargs)


def to_dict(obj: Any, redact: bool = True) -> Any:
    """Plain-data view of a config tree; secret-looking keys are redacted."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.name in ("source_file", "base_dir"):
                continue
            out[f.name] = _redact(f.name, to_dict(getattr(obj, f.name), redact), redact)
        return out
    if isinstance(obj, dict):
        return {k: _redact(k, to_dict(v, redact), redact) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, redact) for v in obj]
    return obj


def _redact(key: str, value: Any, redact: bool) -> Any:
    if redact and isinstance(value, str) and any(m in key.lower() for m in SECRET_MARKERS):
        return "<redacted>"
    return value


# --------------------------------------------------------------------------------------------
# overrides and loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value); the value is parsed as YAML (so 3 is an int)."""
    if "=" not in text:
        raise ConfigError(text, "an override must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(key or text, "an override must look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is not a mapping; cannot override below it")
            node = nxt
        node[parts[-1]] = value
    return data


def load_profile(cfg: RunConfig) -> None:
    """Fill executor fields left empty from the cluster profile file the config names."""
    if not cfg.executor.profile:
        return
    path = cfg.path(cfg.executor.profile)
    if not path.is_file():
        repo_profile = Path(__file__).resolve().parent.parent / "slurm" / "profiles" / f"{cfg.executor.profile}.yaml"
        if repo_profile.is_file():
            path = repo_profile
        else:
            raise ConfigError("executor.profile", f"no profile file {path} (nor {repo_profile})", cfg.source_file)
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError("executor.profile", f"{path} must hold a mapping", str(path))
    prof = build(ExecutorConfig, data, "executor", str(path))
    for f in dataclasses.fields(ExecutorConfig):
        mine, theirs = getattr(cfg.executor, f.name), getattr(prof, f.name)
        if mine in (None, [], {}) and theirs not in (None, [], {}):
            setattr(cfg.executor, f.name, theirs)


def load_config(path: str | Path, overrides: list[str] | None = None, executor: str | None = None) -> RunConfig:
    """Load, override, build and validate a run config. Raises ConfigError naming key and file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", f"config file {path} does not exist", path)
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except yaml.YAMLError as e:
        raise ConfigError("<file>", f"invalid YAML: {e}", path) from e
    if not isinstance(data, dict):
        raise ConfigError("<file>", "the top level must be a mapping", path)
    data = apply_overrides(data, list(overrides or []))
    if executor:
        data.setdefault("executor", {})
        if not isinstance(data["executor"], dict):
            raise ConfigError("executor", "must be a mapping", path)
        data["executor"]["kind"] = executor
    cfg = build(RunConfig, data, "", str(path))
    cfg.source_file = str(path.resolve())
    cfg.base_dir = str(path.resolve().parent)
    load_profile(cfg)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Run every section's validate(root); re-raise with the file name attached."""
    from lmhpc.stages import STAGE_ORDER

    try:
        for f in dataclasses.fields(cfg):
            section = getattr(cfg, f.name)
            if hasattr(section, "validate"):
                section.validate(cfg)
        for stage, res in cfg.resources.items():
            if stage not in STAGE_ORDER:
                raise ConfigError(f"resources.{stage}", f"unknown stage; known: {list(STAGE_ORDER)}")
            res.validate_at(f"resources.{stage}")
            for key in ("partition", "account", "qos", "constraint"):
                v = getattr(res, key)
                if v is not None and any(c in v for c in "\n\r\0"):
                    raise ConfigError(f"resources.{stage}.{key}", "must not contain a newline or NUL")
    except ConfigError as e:
        if e.file is None and cfg.source_file:
            raise ConfigError(e.key, str(e).split(": ", 1)[1], cfg.source_file) from None
        raise


def dump_json(cfg: RunConfig) -> str:
    """The resolved config as JSON, secrets redacted: saved beside every stage's output."""
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
