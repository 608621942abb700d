"""The FinetuneJob's initializer: one Job that runs `kubetune fetch` into a cache claim before any worker starts.

Pure builders (spec in, manifest or decision out), not yet wired into render/decide:
the report of issue 14 says where each call goes. With remote sources
(`hf://`, `s3://`, `https://` in spec.training.model.path / data.path), N workers
would otherwise download the same model N times; instead the initializer fills
`/cache` (a ReadWriteMany claim, KUBETUNE_CACHE_DIR) once, and workers and the
merge Job mount the same claim: their own fetch finds every file in place (one
HEAD or listing per source, no download). Credentials reach pods as environment
from Secrets (HF token file, S3 keys via envFrom), never through the spec.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from kubetune.api import contract
from kubetune.api.config import TrainConfig
from kubetune.api.finetunejob import FinetuneJobSpec, K8sModel, VolumeRef
from kubetune.api.remote import is_remote
from kubetune.operator import render
from kubetune.operator.render import CONTAINER, RESTRICTED_CONTAINER, Names, Settings, _labels, _metadata, short_name

CACHE_MOUNT = "/cache"
ROLE = "initializer"


class RemoteSources(K8sModel):
    """Proposed `spec.sources` of a FinetuneJob (not yet in FinetuneJobSpec)."""

    cache: VolumeRef = Field(description="Claim the initializer fills and every pod reads (ReadWriteMany for >1 node).")
    s3_credentials_secret: str | None = Field(
        None,
        description="Secret whose keys become the pods' environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, AWS_REGION, ...).",
    )


def remote_locations(spec: FinetuneJobSpec) -> list[str]:
    """The spec's remote model and data locations, in the order the trainer fetches them."""
    t = spec.training
    return [p for p in (t.model.path, *t.data.path, *t.data.eval_path) if is_remote(p)]


def needs_initializer(spec: FinetuneJobSpec) -> bool:
    return bool(remote_locations(spec))


def container_config(spec: FinetuneJobSpec) -> TrainConfig:
    """render.container_config, except that remote locations stay remote (the trainer resolves them in /cache)."""
    mapped = render.container_config(spec)
    t = spec.training
    model = t.model.path if is_remote(t.model.path) else mapped.model.path

    def keep_remote(given: list[str], local: list[str]) -> list[str]:
        return [p if is_remote(p) else m for p, m in zip(given, local, strict=True)] if given else local

    data = keep_remote(t.data.path, mapped.data.path)
    evals = keep_remote(t.data.eval_path, mapped.data.eval_path)
    return mapped.model_copy(
        update={
            "model": mapped.model.model_copy(update={"path": model}),
            "data": mapped.data.model_copy(update={"path": data, "eval_path": evals}),
        }
    )


def initializer_name(name: str) -> str:
    return short_name(name, "fetch")


def cache_volume(sources: RemoteSources, read_only: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) for the cache claim; workers may mount it read-only once it is filled."""
    volume = {"name": "cache", "persistentVolumeClaim": {"claimName": sources.cache.claim_name, "readOnly": read_only}}
    mount = {"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": read_only, "subPath": sources.cache.sub_path}
    return volume, mount


def source_env(spec: FinetuneJobSpec, sources: RemoteSources) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(env, envFrom) every pod that touches remote sources needs: the cache dir and the S3 credentials Secret."""
    env = [{"name": contract.ENV_CACHE_DIR, "value": CACHE_MOUNT}]
    env_from = [{"secretRef": {"name": sources.s3_credentials_secret}}] if sources.s3_credentials_secret else []
    return env, env_from


def render_initializer_job(
    meta: dict[str, Any], spec: FinetuneJobSpec, sources: RemoteSources, settings: Settings
) -> dict[str, Any]:
    """A one-pod Job: `kubetune fetch` with the run's config; no retries beyond one (errors are not transient
    often enough: a missing repo stays missing), the trainer's exit code and one-line message tell why."""
    names = Names.of(meta["name"])
    env, env_from = source_env(spec, sources)
    volume, mount = cache_volume(sources, read_only=False)
    volumes = [volume, {"name": "config", "configMap": {"name": names.config}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [
        mount,
        {"name": "config", "mountPath": contract.MOUNT_CONFIG, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if spec.hf_token_secret:
        items = [{"key": spec.hf_token_secret.key, "path": "token"}]
        volumes.append({"name": "hf-token", "secret": {"secretName": spec.hf_token_secret.name, "items": items}})
        mounts.append({"name": "hf-token", "mountPath": "/secrets/hf", "readOnly": True})
        env.append({"name": contract.ENV_HF_TOKEN_FILE, "value": "/secrets/hf/token"})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.images[spec.backend],
        "args": ["fetch"],
        "env": [{"name": contract.ENV_CONFIG, "value": contract.CONFIG_FILE}, *env],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": mounts,
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": render.pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    metadata = _metadata(meta, initializer_name(meta["name"]), ROLE)
    metadata["labels"].update(_labels(meta, spec, ROLE))
    template = {"metadata": {"labels": _labels(meta, spec, ROLE)}, "spec": pod}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {"backoffLimit": 1, "template": template},
    }


# Exit codes of `kubetune fetch` (kubetune.trainer.errors; the operator never imports the trainer).
FETCH_REASONS = {2: "InvalidSource", 10: "SourceNotFound", 11: "SourceAccessDenied", 12: "SourceTransferFailed"}


def initializer_outcome(
    job: dict[str, Any] | None, exit_code: int | None, termination: str | None
) -> tuple[str, str | None, str]:
    """("pending" | "succeeded" | "failed", reason, message) from the initializer Job and its pod's last words.

    The message is the trainer's own line (e.g. `hf://org/x: no such repository at ...`), which is what
    the FinetuneJob's status.message should carry when this ends it.
    """
    conditions = {c.get("type"): c for c in (job or {}).get("status", {}).get("conditions", [])}
    if conditions.get("Complete", {}).get("status") == "True":
        return "succeeded", None, "model and data are in the cache"
    if conditions.get("Failed", {}).get("status") != "True":
        return "pending", None, "fetching model and data"
    message = conditions["Failed"].get("message") or "the initializer failed"
    if termination:
        try:
            record = json.loads(termination)
            message = record.get("message") or message
        except ValueError:
            message = termination.strip().splitlines()[-1] if termination.strip() else message
    return "failed", FETCH_REASONS.get(exit_code or 0, "InitializerFailed"), message


def result_location(spec: FinetuneJobSpec, summary: dict[str, Any] | None) -> str | None:
    """Where the result went, for status: the push target once the trainer (or merge) reports it pushed."""
    if summary and summary.get("pushed_to"):
        return str(summary["pushed_to"])
    return None
