"""The operator's configuration, read once at startup from its environment (set by the Helm chart)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune.api import backends
from kubetune.api.sources import env_number
from kubetune.operator.render import Settings


class SettingsError(ValueError):
    """One line naming the variable that is wrong."""


@dataclass(frozen=True)
class OperatorConfig:
    render: Settings = field(default_factory=Settings)
    poll_seconds: float = 10.0  # how often each running FinetuneJob is reconciled and its progress read
    metrics_port: int = 9090  # Prometheus /metrics; 0 turns it off
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces


def _number(env: Mapping[str, str], name: str, default: float, kind: type, minimum: float) -> float:
    try:
        return env_number(env, name, default, kind, minimum)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def watch_namespaces(env: Mapping[str, str]) -> tuple[str, ...]:
    """KUBETUNE_WATCH_NAMESPACES (comma-separated, the chart's namespaced mode); empty means all."""
    return _csv(env, "KUBETUNE_WATCH_NAMESPACES")


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())


def from_env(env: Mapping[str, str]) -> OperatorConfig:
    defaults = Settings()
    images = {b.name: env.get(b.image_var) or defaults.images[b.name] for b in backends.TABLE.values()}
    render = Settings(
        images=images,
        shm_size=env.get("KUBETUNE_SHM_SIZE") or defaults.shm_size,
        image_pull_secrets=_csv(env, "KUBETUNE_IMAGE_PULL_SECRETS"),
        termination_grace_seconds=int(
            _number(env, "KUBETUNE_TERMINATION_GRACE_SECONDS", defaults.termination_grace_seconds, int, 1)
        ),
    )
    return OperatorConfig(
        render=render,
        poll_seconds=float(_number(env, "KUBETUNE_POLL_SECONDS", 10.0, float, 0.05)),
        metrics_port=int(_number(env, "KUBETUNE_METRICS_PORT", 9090, int, 0)),
        watch_namespaces=watch_namespaces(env),
    )
