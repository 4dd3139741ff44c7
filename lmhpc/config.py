"""Typed run configuration: dataclasses loaded from YAML, dotted overrides, validation.

Every section of the config tree is a dataclass. ``load_config`` reads a YAML file, applies
``key.sub=value`` overrides, builds the tree with type checks, then runs every section's
``validate(root)``. Any problem raises :class:`ConfigError` naming the key and the file, before
anything is submitted.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

# Config keys whose value is a secret, by exact name (``tokenizer`` or ``eod_token_id`` are not secrets).
SECRET_KEYS = frozenset({
    "api_key", "apikey", "token", "access_token", "auth_token", "hf_token", "wandb_api_key", "password", "passwd",
    "secret", "secret_key", "client_secret", "private_key",
})
# Environment variable names that hold secrets: ``*_KEY``, ``*TOKEN``, ``*PASSWORD``, ``*SECRET``, ``*PASSWD``.
SECRET_NAME = re.compile(r"(?:KEY|TOKEN|PASSWORD|PASSWD|SECRET)$", re.IGNORECASE)
# ``NAME=value`` assignments to such names inside a string (setup lines, commands).
SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>\b[A-Za-z_][A-Za-z0-9_]*(?:_KEY|KEY|TOKEN|PASSWORD|PASSWD|SECRET))=(?P<value>\$\([^)]*\)|\"[^\"]*\"|'[^']*'|[^\s;&|]+)",
    re.IGNORECASE,
)
REDACTED = "<redacted>"


def is_secret_name(name: str) -> bool:
    """An environment variable name that holds a secret (``WANDB_API_KEY``, ``HF_TOKEN``, ``DB_PASSWORD``)."""
    return bool(SECRET_NAME.search(name))


def redact_text(text: str) -> str:
    """``text`` with the value of every ``*_KEY=``/``*TOKEN=``/``*PASSWORD=``/``*SECRET=`` assignment redacted."""
    return SECRET_ASSIGNMENT.sub(lambda m: f"{m.group('name')}={REDACTED}", text)


def literal_secrets(text: str) -> list[str]:
    """Names assigned a literal secret in ``text`` (a ``$VAR`` or ``$(command)`` reference is not a literal)."""
    return [m.group("name") for m in SECRET_ASSIGNMENT.finditer(text)
            if not m.group("value").strip("\"'").startswith("$") and m.group("value").strip("\"'")]


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
        from lmhpc.stages import stage_order

        if not self.name or any(c in self.name for c in "/\\\n\r\t '\"$`;&|<>*?") or self.name.startswith("."):
            raise ConfigError("run.name", f"{self.name!r} must be a plain name (letters, digits, - _ .)")
        unknown = [s for s in self.stages if s not in stage_order()]
        if unknown:
            raise ConfigError("run.stages", f"unknown stage(s) {unknown}; known: {list(stage_order())}")
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
            if is_secret_name(name):
                raise ConfigError(
                    f"executor.env.{name}",
                    "secrets must not be written into configs or scripts; export it in the environment",
                )
            if "\0" in value:
                raise ConfigError(f"executor.env.{name}", "must not contain NUL")
        if self.signal_delay_s < 0:
            raise ConfigError("executor.signal_delay_s", "must be >= 0")
        for i, line in enumerate(self.setup):
            names = literal_secrets(line)
            if names:
                raise ConfigError(
                    f"executor.setup[{i}]",
                    f"assigns a literal secret to {', '.join(names)}: it would be written into the job script; "
                    "export it in the environment you submit from, or read it at run time (NAME=$(cat FILE))",
                )


@dataclass
class WandbConfig:
    """Weights & Biases tracking. ``mode`` is offline unless the user asks otherwise."""

    project: str = "lmhpc"
    entity: str | None = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    tags: list[str] = field(default_factory=list)


def _stage_sections() -> dict[str, Any]:
    from lmhpc.stages import registry

    return {name: spec.config() for name, spec in registry().items()}


CORE_SECTIONS = ("run", "executor", "resources", "wandb")


@dataclass
class RunConfig:
    """The whole config tree of one run: the core sections, then one section per registered stage
    (``cfg.curate``, ``cfg.pretrain``, ...: the stage's own config dataclass, see :mod:`lmhpc.stages`)."""

    run: RunSection = field(default_factory=RunSection)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    resources: dict[str, Resources] = field(default_factory=dict)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    sections: dict[str, Any] = field(default_factory=_stage_sections)

    # where it came from (not part of the YAML)
    source_file: str | None = field(default=None, compare=False)
    base_dir: str = field(default=".", compare=False)

    def __getattr__(self, name: str) -> Any:
        # only reached when ordinary lookup fails: stage sections read as attributes
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no section {name!r}")

    def section(self, stage: str) -> Any:
        """The config section of a registered stage."""
        return self.sections[stage]

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


def build_root(data: dict[str, Any], file: str | None = None) -> RunConfig:
    """The run config from plain data: core sections, then each registered stage's section."""
    from lmhpc.stages import registry

    stages = registry()
    core = {k: v for k, v in data.items() if k not in stages}
    cfg = build(RunConfig, core, "", file, extra_known=list(stages))
    for name, value in data.items():
        if name in stages:
            cfg.sections[name] = _coerce(value, stages[name].config, name, file)
    return cfg


def build(cls: type, data: dict[str, Any], prefix: str = "", file: str | None = None,
          extra_known: list[str] | None = None) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    if cls is RunConfig and extra_known is None:
        return build_root(data, file)  # stage sections come from the registry
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields or k in ("source_file", "base_dir", "sections"):
            known = sorted([n for n in fields if n not in ("source_file", "base_dir", "sections")]
                           + list(extra_known or []))
            raise ConfigError(key, f"unknown key; known keys here: {known}", file)
        kwargs[k] = _coerce(v, hints[k], key, file)
    return cls(**kwargs)


def to_dict(obj: Any, redact: bool = True) -> Any:
    """Plain-data view of a config tree; secret-looking keys are redacted."""
    if isinstance(obj, RunConfig):
        out = {name: to_dict(getattr(obj, name), redact) for name in CORE_SECTIONS}
        out.update({name: to_dict(section, redact) for name, section in obj.sections.items()})
        return out
    if dataclasses.is_dataclass(obj):
        return {f.name: _redact(f.name, to_dict(getattr(obj, f.name), redact), redact) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _redact(k, to_dict(v, redact), redact) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v, redact) for v in obj]
    if redact and isinstance(obj, str):
        return redact_text(obj)
    return obj


def _redact(key: str, value: Any, redact: bool) -> Any:
    if redact and isinstance(value, str) and key.lower() in SECRET_KEYS:
        return REDACTED
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
    """Apply ``a.b=value`` overrides in order; a numeric part indexes a list (``curate.inputs.0.path=...``)."""
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(where, f"no item {part} in a list of {len(node)} (indices 0..{len(node) - 1})")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(".".join(parts[:i]), "is not a mapping or a list; cannot override below it")
            if last:
                node[key] = value
                break
            nxt = node[key] if isinstance(node, list) else node.get(key)
            if nxt is None:
                nxt = node[key] = {}
            node = nxt
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
    snapshot = data.pop(SNAPSHOT_KEY, None)
    cfg = build_root(data, str(path))
    cfg.source_file = str(path.resolve())
    cfg.base_dir = str(path.resolve().parent)
    if isinstance(snapshot, dict):
        # a launch's frozen copy: paths stay relative to the original config's folder, the profile is merged
        cfg.base_dir = str(snapshot.get("base_dir", cfg.base_dir))
    else:
        load_profile(cfg)
    validate(cfg)
    return cfg


SNAPSHOT_KEY = "_snapshot"
SNAPSHOT_FILE = "config.yaml"


def write_snapshot(cfg: RunConfig) -> Path:
    """Freeze the resolved config (overrides and cluster profile applied) as ``<run>/config.yaml``.

    Every job of a launch loads this file, so editing the YAML after ``lmhpc run`` changes nothing in the
    jobs already submitted. Secrets never reach it: configs refuse them (see ``ExecutorConfig.validate``)."""
    from lmhpc.fsutil import write_text

    data = {SNAPSHOT_KEY: {"source_file": cfg.source_file, "base_dir": cfg.base_dir,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    data.update(to_dict(cfg, redact=False))
    path = cfg.run_dir / SNAPSHOT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "# the resolved config of the latest launch of this run; every job loads it\n"
               + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def validate(cfg: RunConfig) -> None:
    """Run every section's validate(root); re-raise with the file name attached."""
    from lmhpc.stages import stage_order

    try:
        for section in [*(getattr(cfg, n) for n in CORE_SECTIONS), *cfg.sections.values()]:
            if hasattr(section, "validate"):
                section.validate(cfg)
        for stage, res in cfg.resources.items():
            if stage not in stage_order():
                raise ConfigError(f"resources.{stage}", f"unknown stage; known: {list(stage_order())}")
            res.validate_at(f"resources.{stage}")
            for key in ("partition", "account", "qos", "constraint"):
                v = getattr(res, key)
                if v is not None and (not v or any(c.isspace() or c == "\0" for c in v)):
                    raise ConfigError(f"resources.{stage}.{key}", f"{v!r}: must be one word (no whitespace or NUL)")
        if cfg.executor.kind == "slurm":
            for stage in cfg.run.stages:
                limit_s = cfg.resources_for(stage).timeout_min * 60
                if cfg.executor.signal_delay_s >= limit_s:
                    raise ConfigError(
                        "executor.signal_delay_s",
                        f"{cfg.executor.signal_delay_s}s before the end does not fit stage {stage}'s time limit "
                        f"(resources.{stage}.timeout_min={cfg.resources_for(stage).timeout_min}): the job would be "
                        "signalled as it starts and requeued without progress",
                    )
    except ConfigError as e:
        if e.file is None and cfg.source_file:
            raise ConfigError(e.key, str(e).split(": ", 1)[1], cfg.source_file) from None
        raise


def dump_json(cfg: RunConfig) -> str:
    """The resolved config as JSON, secrets redacted: saved beside every stage's output."""
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
