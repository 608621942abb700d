"""The FinetuneJob resource (kubetune.dev/v1alpha1): spec and status as pydantic models.

The CRD's OpenAPI schema is generated from these (crd.py), so the API server
rejects a bad manifest up front, and the operator parses the same models to
report every remaining problem at once. Field names are camelCase, as in every
Kubernetes API; `spec.training` is the trainer's own config (TrainConfig), with
the same keys as its YAML file.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from kubetune.api.backends import BackendName
from kubetune.api.config import TrainConfig
from kubetune.api.remote import is_remote

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
KIND = "FinetuneJob"
PLURAL = "finetunejobs"
SHORT_NAMES = ["ftj"]

Backend = BackendName  # the rows of kubetune.api.backends.TABLE
Phase = Literal["Pending", "Initializing", "Running", "Merging", "Succeeded", "Failed", "Suspended"]
# Kubernetes quantities: 4, "500m", "16Gi". The CRD takes int-or-string, as the API server does, but they leave
# the model as strings: the kubernetes client (37) validates request bodies with pydantic, and its
# V1ResourceRequirements wants strings, so an integer would be refused before any request is sent.
Quantity = Annotated[int | str, PlainSerializer(str, return_type=str)]

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
    model: VolumeRef | None = Field(
        None,
        description="The base model (a Hugging Face directory); mounted read-only at /model. Not needed when "
        "training.model.path is remote (hf://, s3://, https://).",
    )
    data: VolumeRef | None = Field(
        None,
        description="Training data; mounted read-only at /data. Not needed when every training.data path "
        "(and eval_path) is remote.",
    )
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
    name: str = Field(min_length=1, description="A Secret in the FinetuneJob's namespace.")
    key: str = Field("token", min_length=1)


class RemoteSources(K8sModel):
    """Where remote model and data (hf://, s3://, https://) are fetched to, once, before any worker starts."""

    cache: VolumeRef = Field(
        description="Claim an initializer Job fills with `kubetune fetch` and every pod mounts at /cache "
        "(ReadWriteMany for more than one node)."
    )
    s3_credentials_secret: str | None = Field(
        None,
        min_length=1,
        description="Secret whose keys become the pods' environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_ENDPOINT_URL, AWS_REGION, ...): how s3:// sources and output.push_to find their store.",
    )


# Which claims a spec needs depends on which paths are remote. The same three rules are CEL rules in the CRD
# (crd.py) and checks of the model (FinetuneJobSpec.storage_problems), with the same messages.
MODEL_CLAIM_MESSAGE = (
    "spec.storage.model is required unless spec.training.model.path is remote (hf://, s3://, https://)"
)
DATA_CLAIM_MESSAGE = (
    "spec.storage.data is required unless every spec.training.data.path and eval_path is remote "
    "(hf://, s3://, https://)"
)
CACHE_MESSAGE = (
    "spec.sources.cache is required when a model or data path is remote: the claim the initializer fetches into"
)
SOURCES_ERROR = "storage_for_sources"


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
    hf_token_secret: SecretKeyRef | None = Field(
        None,
        description="Secret key holding a Hugging Face token: mounted as HF_TOKEN_FILE in the pods that "
        "fetch or push to hf://.",
    )
    http_token_secret: SecretKeyRef | None = Field(
        None,
        description="Secret key holding the token of private https:// sources: mounted as "
        "KUBETUNE_HTTP_TOKEN_FILE in the initializer (sent only over https, never on a redirect to another host).",
    )
    sources: RemoteSources | None = Field(
        None, description="Required with remote model or data paths: the cache claim and the S3 credentials."
    )

    def remote_locations(self) -> list[str]:
        """The remote model and data locations, in the order the trainer fetches them."""
        t = self.training
        return [p for p in (t.model.path, *t.data.path, *t.data.eval_path) if is_remote(p)]

    def storage_problems(self) -> list[str]:
        """Claims missing for the local paths, and the cache missing for the remote ones: every one at once."""
        t = self.training
        problems = []
        if self.storage.model is None and not is_remote(t.model.path):
            problems.append(MODEL_CLAIM_MESSAGE)
        data = [*t.data.path, *t.data.eval_path]
        if self.storage.data is None and not (t.data.path and all(is_remote(p) for p in data)):
            problems.append(DATA_CLAIM_MESSAGE)
        if self.sources is None and self.remote_locations():
            problems.append(CACHE_MESSAGE)
        return problems

    @model_validator(mode="after")
    def _claims_for_paths(self) -> FinetuneJobSpec:
        problems = self.storage_problems()
        if problems:
            # One error carrying every problem; status.spec_problems lists them one by one.
            raise PydanticCustomError(SOURCES_ERROR, "{joined}", {"joined": "; ".join(problems), "problems": problems})
        return self


class Progress(K8sModel):
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    epoch: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    speed_vs_plan: float | None = Field(
        None,
        description="tokensPerSecond over status.plan.tokensPerSecond: 1.0 runs as planned, 0.5 takes twice as long.",
    )


class PlanSummary(K8sModel):
    """What the initializer's plan (`kubetune plan --preflight`, docs/plan.md) said before any worker started."""

    peak_bytes_per_worker: int = Field(
        description="Peak memory of one worker pod: the plan's peak per process times procsPerNode."
    )
    peak: str = Field(description="peakBytesPerWorker for people (GiB).")
    batch_size: int = Field(description="training.batch_size the plan is for.")
    max_batch_size: int | None = Field(
        None, description="The largest training.batch_size within spec.resources.limits.memory, when one is given."
    )
    tokens: int = Field(description="Tokens the whole run trains on (the actual data after templating and packing).")
    steps: int = Field(description="Optimizer steps of the whole run.")
    estimated_seconds: float | None = Field(None, description="The plan's time for the whole run (CPU estimate).")
    tokens_per_second: float | None = Field(None, description="The plan's training rate: tokens / estimatedSeconds.")
    estimate: str = Field(description="Peak per worker and time, for kubectl's PLAN column.")
    memory: str | None = Field(
        None, description="The memory each worker pod was given from the plan (spec.resources omitted), with headroom."
    )
    merge_peak_bytes: int | None = Field(
        None, description="Peak memory of the merge Job (`kubetune merge`, one process), when the plan has it."
    )
    merge_memory: str | None = Field(
        None, description="The memory limit the merge pod was given from the plan (spec.resources omitted)."
    )


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
    plan: PlanSummary | None = Field(None, description="The preflight plan: peak memory, tokens, estimated time.")
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int = Field(0, description="Worker pods replaced (preempted, evicted or retried).")
    worker_pods: dict[str, str] = Field(
        default_factory=dict, description="The newest pod seen per worker index; how restarts are counted."
    )
    adapter_path: str | None = None
    merged_path: str | None = None
    result_location: str | None = Field(
        None, description="Where output.pushTo put the adapter, merged model and run.json (s3:// or hf://)."
    )
    eval_metric: str | None = Field(None, description="What chose the adapter: the best eval of this metric.")
    best_step: int | None = Field(None, description="The step whose weights became the adapter.")
    best_value: float | None = Field(None, description="The eval metric's value at bestStep.")
    message: str | None = None
    progress_summary: str | None = Field(None, description="step/totalSteps, for kubectl's PROGRESS column.")
