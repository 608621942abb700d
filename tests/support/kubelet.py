"""What the kubelet adds to a pod that the pod spec does not say, written from the Kubernetes docs.

Service links: with `enableServiceLinks` on (the default), every container gets variables for each Service
of the pod's namespace that has a cluster IP (headless ones give none), in the Docker-links form too
(kubernetes.io/docs/concepts/services-networking/service/#environment-variables; kubelet's
pkg/kubelet/envvars). The pod's own `env` and `envFrom` override them.
"""

from __future__ import annotations

from typing import Any


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the kubelet injects for these Services (the docs' redis-primary example, for any name)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec") or {}
        ip, ports = spec.get("clusterIP"), spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        prefix = _env_name(service["metadata"]["name"])
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            link = f"{prefix}_PORT_{port['port']}_{proto}"
            env[link] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{link}_PROTO"] = proto.lower()
            env[f"{link}_PORT"] = str(port["port"])
            env[f"{link}_ADDR"] = ip
    return env


def pod_env(
    pod_spec: dict[str, Any], services: list[dict[str, Any]], env_from: dict[str, str], env: dict[str, str]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: service links (unless switched off), then envFrom,
    then env, each overriding the one before."""
    links = service_link_env(services) if pod_spec.get("enableServiceLinks", True) else {}
    return {**links, **env_from, **env}
