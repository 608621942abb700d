"""The operator's configuration, read once at startup from its environment (set by the Helm chart)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubetune.api import backends
from kubetune.api.sources import env_number


class SettingsError(ValueError):
    """One line naming the variable that is wrong."""


@dataclass(frozen=True)
class Policy:
    """What a FinetuneJob may ask for (chart `policy`): creating one is close to creating pods, so the pods'
    image, Secrets, scheduling and remote code are the administrator's to allow. Patterns are globs (fnmatch).
    The defaults change nothing a single-team install does, except remote code, which is off."""

    images: tuple[str, ...] = ()  # spec.image beyond the trainer images; "*" allows any
    secrets: tuple[str, ...] = ("*/*",)  # "<namespace>/<secret>" a spec may reference (S3 keys, HF token)
    priority_classes: tuple[str, ...] = ()  # empty: any but system-* (those preempt cluster components)
    toleration_keys: tuple[str, ...] = ()  # empty: any key, but not a key-less toleration (it tolerates every taint)
    remote_code: bool = False  # model.trust_remote_code; allowed only with a pinned hf:// commit


@dataclass(frozen=True)
class PodSettings:
    """What the operator's configuration says about the pods it renders (images, shared memory, grace, policy)."""

    images: dict[str, str] = field(default_factory=lambda: {b.name: b.image for b in backends.TABLE.values()})
    shm_size: str = "2Gi"  # dataloader shared memory
    # /tmp (HF_HOME, matplotlib, temp files; the root filesystem is read-only): bounded, so a runaway write
    # evicts this pod instead of filling the node's disk under its neighbours.
    tmp_size: str = "16Gi"
    termination_grace_seconds: int = 600  # time for the SIGTERM checkpoint of a large model
    image_pull_secrets: tuple[str, ...] = ()  # Secrets for pulling trainer images from a private registry
    policy: Policy = field(default_factory=Policy)
    # A NetworkPolicy per job (chart networkPolicy): ingress only from the same run's pods (the rendezvous);
    # egress to the same run, DNS, and these rules (NetworkPolicyEgressRule objects; none: anywhere).
    network_policy: bool = False
    network_egress: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Knob:
    """One numeric setting: its variable, default and bounds. The chart's values schema is generated from
    these (tools/gen_chart.py), so `helm install` refuses exactly what the operator would refuse."""

    env: str
    default: float
    kind: type
    minimum: float
    maximum: float | None = None

    def read(self, env: Mapping[str, str]) -> float:
        try:
            value = env_number(env, self.env, self.default, self.kind, self.minimum)
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"env {self.env}: must be <= {self.maximum}, got {env[self.env]}")
        return value


POLL_SECONDS = Knob("KUBETUNE_POLL_SECONDS", 10.0, float, 0.05, 3600)
TERMINATION_GRACE_SECONDS = Knob("KUBETUNE_TERMINATION_GRACE_SECONDS", PodSettings().termination_grace_seconds, int, 1)
METRICS_PORT = Knob("KUBETUNE_METRICS_PORT", 9090, int, 0, 65535)


@dataclass(frozen=True)
class OperatorConfig:
    pods: PodSettings = field(default_factory=PodSettings)
    poll_seconds: float = POLL_SECONDS.default  # how often each running FinetuneJob is reconciled and its progress read
    metrics_port: int = int(METRICS_PORT.default)  # Prometheus /metrics; 0 turns it off
    watch_namespaces: tuple[str, ...] = ()  # empty: all namespaces


# A namespace's name (a DNS-1123 label). The chart's values schema takes it from here (tools/gen_chart.py).
NAMESPACE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def watch_namespaces(env: Mapping[str, str]) -> tuple[str, ...]:
    """KUBETUNE_WATCH_NAMESPACES (comma-separated, the chart's namespaced mode); empty means all. Names only:
    kopf reads "team-*" as a glob, which needs the right to list every namespace that namespaced mode withholds."""
    names = _csv(env, "KUBETUNE_WATCH_NAMESPACES")
    bad = [n for n in names if len(n) > 63 or not NAMESPACE_NAME.match(n)]
    if bad:
        raise SettingsError(
            f"env KUBETUNE_WATCH_NAMESPACES: {bad[0]!r} is not a namespace name "
            "(lowercase letters, digits and '-', at most 63 characters; no globs)"
        )
    return names


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())


def from_env(env: Mapping[str, str]) -> OperatorConfig:
    defaults = PodSettings()
    images = {b.name: env.get(b.image_var) or defaults.images[b.name] for b in backends.TABLE.values()}
    pods = PodSettings(
        images=images,
        shm_size=env.get("KUBETUNE_SHM_SIZE") or defaults.shm_size,
        tmp_size=env.get("KUBETUNE_TMP_SIZE") or defaults.tmp_size,
        image_pull_secrets=_csv(env, "KUBETUNE_IMAGE_PULL_SECRETS"),
        termination_grace_seconds=int(TERMINATION_GRACE_SECONDS.read(env)),
        policy=policy_from_env(env),
        network_policy=env.get("KUBETUNE_NETWORK_POLICY", "false").strip().lower() == "true",
        network_egress=_egress(env),
    )
    return OperatorConfig(
        pods=pods,
        poll_seconds=float(POLL_SECONDS.read(env)),
        metrics_port=int(METRICS_PORT.read(env)),
        watch_namespaces=watch_namespaces(env),
    )


def policy_from_env(env: Mapping[str, str]) -> Policy:
    """KUBETUNE_ALLOWED_* (comma-separated globs, set by the chart's `policy`); unset keeps each default."""
    remote_code = env.get("KUBETUNE_ALLOW_REMOTE_CODE", "false").strip().lower()
    if remote_code not in ("true", "false"):
        raise SettingsError(f"env KUBETUNE_ALLOW_REMOTE_CODE: must be true or false, got {remote_code!r}")
    secrets = _csv(env, "KUBETUNE_ALLOWED_SECRETS") if "KUBETUNE_ALLOWED_SECRETS" in env else Policy().secrets
    bad = [s for s in secrets if s.count("/") != 1]
    if bad:
        raise SettingsError(f"env KUBETUNE_ALLOWED_SECRETS: {bad[0]!r} is not <namespace>/<secret> (globs allowed)")
    return Policy(
        images=_csv(env, "KUBETUNE_ALLOWED_IMAGES"),
        secrets=secrets,
        priority_classes=_csv(env, "KUBETUNE_ALLOWED_PRIORITY_CLASSES"),
        toleration_keys=_csv(env, "KUBETUNE_ALLOWED_TOLERATION_KEYS"),
        remote_code=remote_code == "true",
    )


def _egress(env: Mapping[str, str]) -> tuple[dict[str, Any], ...]:
    """KUBETUNE_NETWORK_POLICY_EGRESS: a JSON list of NetworkPolicyEgressRule objects (the chart writes it)."""
    text = env.get("KUBETUNE_NETWORK_POLICY_EGRESS", "").strip() or "[]"
    try:
        rules = json.loads(text)
    except ValueError as exc:
        raise SettingsError(f"env KUBETUNE_NETWORK_POLICY_EGRESS: not JSON ({exc})") from None
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise SettingsError("env KUBETUNE_NETWORK_POLICY_EGRESS: must be a JSON list of egress rules")
    return tuple(rules)
