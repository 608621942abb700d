"""Build a TrainConfig from YAML, environment and CLI, reporting every problem at once.

Precedence, lowest first: YAML file < environment < CLI (`--set` and flags).
Each leaf remembers where it came from (`file.yaml:12`, `env KUBETUNE_X`,
`--set a.b`), so an error names the file and line, the variable or the flag.
Everything here is pure: the caller passes the environment and file text in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api import contract
from kubetune.api.config import TrainConfig

ENV_PREFIX = "KUBETUNE_"
# The seeds' (BigDL / ipex-llm container) names, kept so their users' habits work.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "BASE_MODEL_PATH": ("model", "path"),
    "DATA_PATH": ("data", "path"),
    "OUTPUT_DIR": ("output_dir",),
}
# KUBETUNE_* variables that configure the process, not the run: never config keys.
RESERVED_ENV = contract.PROCESS_ENV
# What the kubelet injects for every Service of the pod's namespace while enableServiceLinks is on
# (kubernetes.io/docs/concepts/services-networking/service/#environment-variables): a Service named
# `kubetune-metrics` gives KUBETUNE_METRICS_SERVICE_HOST, _SERVICE_PORT[_<port name>], _PORT and
# _PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]. Config keys nest with `__`, which a Service name cannot produce.
SERVICE_LINK = re.compile(
    r"[A-Z0-9_]+_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)"
)

Path_ = tuple[str, ...]


class ConfigError(Exception):
    """One or more problems with the config; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Layer:
    """Values from one source plus, for each leaf path, where it came from."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[Path_, str] = field(default_factory=dict)

    def put(self, path: Path_, value: Any, origin: str) -> None:
        node = self.values
        for key in path[:-1]:
            nxt = node.get(key)
            if not isinstance(nxt, dict):
                nxt = node[key] = {}
            node = nxt
        node[path[-1]] = value
        self.origin[path] = origin


def _yaml_line_map(text: str) -> dict[Path_, int]:
    """Map each mapping key path in a YAML document to its 1-based line number."""
    lines: dict[Path_, int] = {}

    def walk(node: yaml.Node, prefix: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                path = (*prefix, str(key_node.value))
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path)

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _leaves(values: Mapping[str, Any], prefix: Path_ = ()) -> list[tuple[Path_, Any]]:
    out: list[tuple[Path_, Any]] = []
    for key, value in values.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and value:
            out.extend(_leaves(value, path))
        else:
            out.append((path, value))
    return out


def env_number(environ: Mapping[str, str], name: str, default: float, kind: type = int, minimum: float = 0) -> Any:
    """One numeric environment variable; ValueError with a one-line message naming it when it is wrong."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        article = "an integer" if kind is int else "a number"
        raise ValueError(f"env {name}: expected {article}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"env {name}: must be >= {minimum}, got {raw}")
    return value


def layer_from_yaml(text: str, filename: str) -> Layer:
    """Parse a YAML config; syntax errors name the file and line."""
    try:
        values = yaml.safe_load(text)
        lines = _yaml_line_map(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"]) from exc
    if values is None:
        return Layer()
    if not isinstance(values, dict):
        raise ConfigError([f"{filename}:1: the config must be a mapping of sections, got {type(values).__name__}"])
    layer = Layer()
    for path, value in _leaves(values):
        line = lines.get(path)
        layer.put(path, value, f"{filename}:{line}" if line else filename)
    # Sections get an origin too, so an unknown section is reported at its own line.
    for path, line in lines.items():
        layer.origin.setdefault(path, f"{filename}:{line}")
    return layer


def _scalar(text: str) -> Any:
    """Interpret an env/CLI string the way YAML would (numbers, booleans, lists)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


# The images' documented mount points and the config keys they default, checked in this order.
MOUNTS: tuple[tuple[Path_, str, str], ...] = (
    (("model", "path"), "model", "model/config.json"),  # only a real model dir replaces the builtin default
    (("data", "path"), "data", "data"),
    (("output_dir",), "output", "output"),
)


def layer_from_mounts(root: str, exists: Callable[[str], bool]) -> Layer:
    """In a container, the mounts /model, /data, /output are defaults below everything else.

    Lowest priority on purpose: a mounted YAML that names /data/train.jsonl must not be overridden by /data.
    """
    layer = Layer()
    base = root.rstrip("/")
    for path, mount, probe in MOUNTS:
        if exists(f"{base}/{probe}"):
            layer.put(path, f"{base}/{mount}", f"mount {base}/{mount}")
    return layer


def unusable_mounts(root: str, usable: Callable[[str, bool], bool | None], uid: int) -> list[str]:
    """The mounts that are there but that this user cannot use, each named (not a silent fallback to defaults).

    `usable(path, write)` is None where nothing is mounted, else whether the user can read (write) it.
    """
    base = root.rstrip("/")
    problems = []
    for _, mount, _ in MOUNTS:
        path, write = f"{base}/{mount}", mount == "output"
        if usable(path, write) is False:
            need = "writable" if write else "readable"
            problems.append(f"{path}: mounted but not {need} by UID {uid} (check its owner and mode)")
    return problems


def is_service_link(name: str) -> bool:
    """A kubelet service-link variable (not a config key): flat, of that shape, and no top-level key's name."""
    key = name[len(ENV_PREFIX) :]
    return "__" not in key and bool(SERVICE_LINK.fullmatch(key)) and key.lower() not in TrainConfig.model_fields


def layer_from_env(environ: Mapping[str, str]) -> Layer:
    """KUBETUNE_<SECTION>__<KEY>=value (nested with `__`) plus the seeds' aliases."""
    layer = Layer()
    for name, path in ENV_ALIASES.items():
        if environ.get(name):
            layer.put(path, environ[name], f"env {name}")
    problems = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV or is_service_link(name):
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        if any(not p for p in parts):
            problems.append(f"env {name}: malformed name (use KUBETUNE_<SECTION>__<KEY>)")
            continue
        layer.put(parts, _scalar(environ[name]), f"env {name}")
    if problems:
        raise ConfigError(problems)
    return layer


def layer_from_sets(assignments: list[str]) -> Layer:
    """`--set training.lr=1e-4` style overrides."""
    layer = Layer()
    problems = []
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item}: expected KEY=VALUE, e.g. training.lr=1e-4")
            continue
        layer.put(tuple(key.strip().split(".")), _scalar(value), f"--set {key.strip()}")
    if problems:
        raise ConfigError(problems)
    return layer


def layer_from_flags(flags: Mapping[Path_, Any], names: Mapping[Path_, str]) -> Layer:
    """Dedicated CLI flags (`--lr 1e-4`): only the ones the user actually gave (not None)."""
    layer = Layer()
    for path, value in flags.items():
        if value is not None:
            layer.put(path, value, names.get(path, "--" + path[-1]))
    return layer


def merge(*layers: Layer) -> Layer:
    """Later layers win, leaf by leaf."""
    merged = Layer()
    for layer in layers:
        for path, value in _leaves(layer.values):
            merged.put(path, value, layer.origin.get(path, "?"))
        merged.origin.update(layer.origin)
    return merged


def _origin_for(loc: tuple[Any, ...], origin: Mapping[Path_, str]) -> str | None:
    """Where the value at `loc` came from: itself, an ancestor, or (for a section) its first leaf."""
    path = tuple(str(p) for p in loc if not isinstance(p, int))
    for n in range(len(path), 0, -1):
        if path[:n] in origin:
            return origin[path[:n]]
    inside = [where for leaf, where in origin.items() if leaf[: len(path)] == path]
    return inside[0] if inside else None


_BRANCH_TYPES = {"str", "int", "float", "bool", "none"}


def _branch(part: Any) -> bool:
    """A union branch tag in a pydantic error location (never a config key: keys are snake_case words)."""
    text = str(part)
    return not isinstance(part, int) and (text in _BRANCH_TYPES or text.startswith(("literal[", "list[", "dict[")))


def format_errors(exc: ValidationError, origin: Mapping[Path_, str]) -> list[str]:
    """One line per problem: `<where>: <dotted.key>: <message>`."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic appends the union branch's name (`str`, `int`, `literal['a']`, `list[str]`): not a key.
        key = ".".join(str(p) for p in loc if not _branch(p))
        where = _origin_for(loc, origin)
        msg = err["msg"].removeprefix("Value error, ")  # our validators' messages stand on their own
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] not in {"missing"}:
            shown = repr(err["input"])
            msg = f"{msg} (got {shown[:60]})"
        problems.append(f"{where}: {key}: {msg}" if where else f"{key}: {msg}")
    # Union branches can report the same problem twice.
    return list(dict.fromkeys(problems))


def build_config(*layers: Layer) -> TrainConfig:
    """Merge the layers and validate; raises ConfigError listing every problem."""
    merged = merge(*layers)
    try:
        return TrainConfig.model_validate(merged.values)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, merged.origin)) from None


def load_config(
    yaml_text: str | None = None,
    yaml_name: str = "config.yaml",
    environ: Mapping[str, str] | None = None,
    sets: list[str] | None = None,
    flags: Mapping[Path_, Any] | None = None,
    flag_names: Mapping[Path_, str] | None = None,
    mounts: Layer | None = None,
) -> TrainConfig:
    """The one entry point: (container mounts <) YAML < env < --set < flags."""
    layers = [mounts] if mounts is not None else []
    problems: list[str] = []
    for make in (
        lambda: layer_from_yaml(yaml_text, yaml_name) if yaml_text is not None else Layer(),
        lambda: layer_from_env(environ or {}),
        lambda: layer_from_sets(sets or []),
        lambda: layer_from_flags(flags or {}, flag_names or {}),
    ):
        try:
            layers.append(make())
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return build_config(*layers)


def to_yaml(config: TrainConfig) -> str:
    """The resolved config as YAML (what `kubetune config show` prints and run.json records)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
