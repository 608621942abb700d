"""The FinetuneJob's initializer: one Job that runs `kubetune fetch` into the cache claim before any worker starts.

With remote sources (`hf://`, `s3://`, `https://` in spec.training.model.path /
data.path), N workers would otherwise download the same model N times; instead
the initializer fills `/cache` (spec.sources.cache, a ReadWriteMany claim for
more than one node; KUBETUNE_CACHE_DIR) once, like Kubeflow Trainer's model and
dataset initializers, and workers and the merge Job mount the same claim: their
own fetch finds every file in place (one HEAD or listing per source, no
download). Credentials reach pods as environment from Secrets (HF token file,
S3 keys via envFrom), never through the spec. status.decide creates this Job
first and the workers only once it completed; its failure ends the FinetuneJob
with the trainer's own one-line message.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune.api import conditions as cond
from kubetune.api import contract
from kubetune.api.contract import ExitCode
from kubetune.api.finetunejob import FinetuneJobSpec, RemoteSources
from kubetune.operator import render
from kubetune.operator.render import CONTAINER, RESTRICTED_CONTAINER, Settings, _labels, _metadata

ROLE = "initializer"


def needs_initializer(spec: FinetuneJobSpec) -> bool:
    return bool(spec.remote_locations()) and spec.sources is not None


def render_initializer_job(
    meta: dict[str, Any], spec: FinetuneJobSpec, sources: RemoteSources, settings: Settings
) -> dict[str, Any]:
    """A one-pod Job: `kubetune fetch` with the run's config; no retries beyond one (errors are not transient
    often enough: a missing repo stays missing), the trainer's exit code and one-line message tell why."""
    names = render.Names.of(meta["name"])
    env, env_from = render.source_env(sources)
    volume, mount = render.cache_volume(sources)
    token_volumes, token_mounts, token_env = render.hf_token(spec)
    volumes = [
        volume,
        {"name": "config", "configMap": {"name": names.config}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "scratch", "emptyDir": {}},
    ]
    mounts = [
        mount,
        {"name": "config", "mountPath": contract.MOUNT_CONFIG, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        # The image checks that /output is writable before any command; fetch writes nothing there, and the
        # output claim (possibly ReadWriteOnce, in use by a previous run's pod) is not needed: an empty dir.
        {"name": "scratch", "mountPath": contract.MOUNT_OUTPUT},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.images[spec.backend],
        "args": ["fetch"],
        "env": [{"name": contract.ENV_CONFIG, "value": contract.CONFIG_FILE}, *env, *token_env],
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        "volumeMounts": mounts + token_mounts,
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from:
        container["envFrom"] = env_from
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,  # as the workers' (render._pod_spec)
        "securityContext": render.pod_security_context(),
        "containers": [container],
        "volumes": volumes + token_volumes,
    }
    metadata = _metadata(meta, render.Names.of(meta["name"]).initializer, ROLE)
    metadata["labels"].update(_labels(meta, spec, ROLE))
    # Placed like the workers (pull secrets, node selector, tolerations): the same image, the same nodes.
    template = {"metadata": {"labels": _labels(meta, spec, ROLE)}, "spec": render._place(pod, spec, settings)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 1,
            # A missing, denied or malformed source stays so: fail at once (a cut transfer is retried, resuming).
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": render.PERMANENT_EXIT_CODES,
                        },
                    }
                ]
            },
            "template": template,
        },
    }


# Why `kubetune fetch` failed, by its exit code (kubetune.api.contract; the operator never imports the trainer).
FETCH_REASONS = {
    ExitCode.CONFIG: cond.INVALID_SOURCE,
    ExitCode.SOURCE_MISSING: cond.SOURCE_NOT_FOUND,
    ExitCode.SOURCE_DENIED: cond.SOURCE_ACCESS_DENIED,
    ExitCode.TRANSFER: cond.SOURCE_TRANSFER_FAILED,
}


def initializer_outcome(
    job: dict[str, Any] | None, exit_code: int | None, termination: str | None
) -> tuple[str, str | None, str]:
    """("pending" | "succeeded" | "failed", reason, message) from the initializer Job and its pod's last words.

    The message is the trainer's own line (e.g. `hf://org/x: no such repository at ...`), which is what
    the FinetuneJob's status.message should carry when this ends it.
    """
    status = (job or {}).get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if conditions.get("Complete", {}).get("status") == "True":
        return "succeeded", None, "model and data are in the cache"
    if conditions.get("Failed", {}).get("status") != "True":
        return "pending", None, "fetching model and data into the cache"
    message = conditions["Failed"].get("message") or "the initializer failed"
    if termination and termination.strip():
        try:
            record = json.loads(termination)
        except ValueError:
            record = {"message": termination.strip().splitlines()[-1]}  # FallbackToLogsOnError: the log's last line
        if isinstance(record, dict) and record.get("message"):
            message = str(record["message"])
    return "failed", FETCH_REASONS.get(exit_code or 0, cond.INITIALIZER_FAILED), message


def result_location(summary: dict[str, Any] | None) -> str | None:
    """Where the result went, for status: the push target once the trainer (or merge) reports it pushed."""
    if summary and summary.get("pushed_to"):
        return str(summary["pushed_to"])
    return None
