"""The FinetuneJob resource (kubetune.dev/v1alpha1): spec and status as pydantic models.

The CRD's OpenAPI schema is generated from these (crd.py), so the API server
rejects a bad manifest up front, and the operator parses the same models to
report every remaining problem at once. Field names are camelCase, as in every
Kubernetes API; `spec.training` is the trainer's own config (TrainConfig), with
the same keys as its YAML file.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune.api.backends import BackendName
from kubetune.api.config import TrainConfig

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
KIND = "FinetuneJob"
PLURAL = "finetunejobs"
SHORT_NAMES = ["ftj"]

Backend = BackendName  # the rows of kubetune.api.backends.TABLE
Phase = Literal["Pending", "Running", "Merging", "Succeeded", "Failed", "Suspended"]
Quantity = int | str  # Kubernetes quantities: 4, "500m", "16Gi"

# A FinetuneJob's name becomes a label value (at most 63 characters) and the start of its Service's name
# (an RFC 1035 label: lowercase letters, digits and '-', starting with a letter); worker pod hostnames are
# <name>...-<index>, so no dots either. The API server would accept any DNS subdomain as the name of a
# custom object; the CRD narrows it to this (a CEL rule on metadata.name) so that no child is refused later.
NAME_MAX = 63
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE = f"size(self.metadata.name) <= {NAME_MAX} && self.metadata.name.matches('{NAME_PATTERN}')"
NAME_MESSAGE = (
    f"metadata.name must be at most {NAME_MAX} characters of lowercase letters, digits and '-', start with a "
    "letter and end with a letter or digit (it names the job's Service and labels its pods)"
)


QUEUED_SUSPEND_MESSAGE = (
    "spec.runPolicy.suspend cannot be set with spec.scheduling.queueName: Kueue owns the suspension of queued "
    "Jobs (deactivate the job's Workload instead: spec.active=false)"
)


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a FinetuneJob's name, or None (the same rule the CRD enforces)."""
    if len(name) <= NAME_MAX and re.fullmatch(NAME_PATTERN.strip("^$"), name):
        return None
    return f"{NAME_MESSAGE}; got {name!r}"


class K8sModel(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class VolumeRef(K8sModel):
    claim_name: str = Field(min_length=1, max_length=253, description="PersistentVolumeClaim to mount.")
    sub_path: str = Field("", description="Directory inside the claim (default: its root).")


class Storage(K8sModel):
    model: VolumeRef = Field(description="The base model (a Hugging Face directory); mounted read-only at /model.")
    data: VolumeRef = Field(description="Training data; mounted read-only at /data.")
    output: VolumeRef = Field(
        description="Checkpoints, adapter, merged model and reports; mounted read-write at /output. Several "
        "nodes need a ReadWriteMany claim (rank 0 writes, all ranks checkpoint)."
    )


class Resources(K8sModel):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="Per worker pod; default per backend.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Per worker pod; default per backend.")


class Merge(K8sModel):
    enabled: bool = Field(True, description="Run `kubetune merge` as a Job after training succeeds.")


class RunPolicy(K8sModel):
    backoff_limit: int = Field(
        3, ge=0, le=100, description="Worker failures retried; preemptions (exit 75) do not count."
    )
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail with DeadlineExceeded after this.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the finished job's children after this many seconds."
    )
    suspend: bool = Field(False, description="Delete running workers; their checkpoints stay. Resume continues.")


class Scheduling(K8sModel):
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    queue_name: str | None = Field(None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name).")


class SecretKeyRef(K8sModel):
    name: str = Field(min_length=1, description="Secret holding a Hugging Face token.")
    key: str = Field("token", min_length=1)


class FinetuneJobSpec(K8sModel):
    backend: Backend = Field("cpu", description="Picks the image, default resources and collective backend.")
    image: str | None = Field(None, description="Override the operator's image for this backend.")
    nodes: int = Field(1, ge=1, le=256, description="Worker pods.")
    procs_per_node: int = Field(1, ge=1, le=128, description="Training processes in each worker pod.")
    resources: Resources | None = None
    storage: Storage
    training: TrainConfig = Field(default_factory=TrainConfig, description="The trainer's config (its YAML keys).")
    merge: Merge = Field(default_factory=Merge)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    hf_token_secret: SecretKeyRef | None = None


class Progress(K8sModel):
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    epoch: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None


class Condition(K8sModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class FinetuneJobStatus(K8sModel):
    phase: Phase | None = None
    conditions: list[Condition] = Field(default_factory=list)
    progress: Progress | None = None
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int = Field(0, description="Worker pods replaced (preempted, evicted or retried).")
    worker_pods: dict[str, str] = Field(
        default_factory=dict, description="The newest pod seen per worker index; how restarts are counted."
    )
    adapter_path: str | None = None
    merged_path: str | None = None
    message: str | None = None
    progress_summary: str | None = Field(None, description="step/totalSteps, for kubectl's PROGRESS column.")
