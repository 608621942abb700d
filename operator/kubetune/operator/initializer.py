"""The FinetuneJob's initializer: one Job that runs `kubetune fetch` into the cache claim before any worker starts.

With remote sources (`hf://`, `s3://`, `https://` in spec.training.model.path /
data.path), N workers would otherwise download the same model N times; instead
the initializer fills `/cache` (spec.sources.cache, a ReadWriteMany claim for
more than one node; KUBETUNE_CACHE_DIR) once, like Kubeflow Trainer's model and
dataset initializers, and workers and the merge Job mount the same claim
read-only: with KUBETUNE_SOURCES_LOCK (the run's uid) they ask no source
anything and train on exactly what this Job fetched. Credentials reach pods from
Secrets (HF and https token files, S3 keys via envFrom), never through the
spec: every source credential here, only the push target's in the pods that push. `decide` creates this Job
first and the workers only once it completed; its failure ends the FinetuneJob
with the trainer's own one-line message.
"""

from __future__ import annotations

from typing import Any

from kubetune.api import conditions as cond
from kubetune.api.contract import ExitCode
from kubetune.api.finetunejob import FinetuneJobSpec
from kubetune.operator import render
from kubetune.operator.reports import last_words, message_of
from kubetune.operator.settings import PodSettings

ROLE = "initializer"
# `kubetune fetch` moves bytes: far less than training needs, whatever the backend.
RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}


def needs_initializer(spec: FinetuneJobSpec) -> bool:
    return bool(spec.remote_locations()) and spec.sources is not None


def render_initializer_job(meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings) -> dict[str, Any]:
    """A one-pod Job: `kubetune fetch` with the run's config, from the workers' pod template (same image, same
    nodes, same credentials). No claim but the cache: /output is an empty dir (the image checks it is
    writable; the output claim may be ReadWriteOnce and in use by a previous run's pod). One retry: a missing
    repo stays missing (the fail-fast rule), a cut transfer resumes."""
    role = render.PodRole(ROLE, ["fetch"], (), resources=RESOURCES, scratch_output=True, fetches=True)
    job_spec = {
        "backoffLimit": 1,
        "podFailurePolicy": {"rules": [render.fail_fast_rule()]},
        "template": render.pod_template(meta, spec, settings, role),
    }
    return render.child_job(meta, render.Names.of(meta["name"]).initializer, ROLE, spec, job_spec)


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
    message = message_of(last_words(termination)) or conditions["Failed"].get("message") or "the initializer failed"
    return "failed", FETCH_REASONS.get(exit_code or 0, cond.INITIALIZER_FAILED), message
