"""The FinetuneJob's initializer: one small CPU Job that runs before any worker, for every FinetuneJob.

It runs `kubetune plan --preflight`: with remote sources (`hf://`, `s3://`, `https://` in
spec.training.model.path / data.path) it first fills `/cache` (spec.sources.cache, a ReadWriteMany claim
for more than one node; KUBETUNE_CACHE_DIR) once, like Kubeflow Trainer's model and dataset initializers,
instead of N workers downloading the same model N times; workers and the merge Job mount the same claim
read-only and, with KUBETUNE_SOURCES_LOCK (the run's uid), ask no source anything. Then it reads the
config and the actual data and plans the run (docs/plan.md) with the workers' layout, against the worker
pod's memory limit when spec.resources gives one, and leaves the plan as its last word: the contract's
PlanEvent in the termination message. A bad config or dataset therefore fails here, on a small pod, and
a run that cannot fit fails before any worker pod exists (decide.py).

Credentials reach pods from Secrets (HF and https token files, S3 keys via envFrom), never through the
spec: every source credential here, only the push target's in the pods that push. Its failure ends the
FinetuneJob with the trainer's own one-line message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kubetune.api import backends, contract, quantity
from kubetune.api import conditions as cond
from kubetune.api.contract import ExitCode, PlanEvent
from kubetune.api.finetunejob import FinetuneJobSpec, PlanSummary, Resources
from kubetune.operator import render
from kubetune.operator.observed import PodView
from kubetune.operator.reports import last_words, message_of
from kubetune.operator.settings import PodSettings

ROLE = "initializer"
# Fetching moves bytes and the plan builds the model on torch's meta device (no weights): far less than
# training needs, whatever the backend. The tokenized data is the one thing that grows with the run, so a
# worker limit above this one is the initializer's limit too (initializer_resources).
RESOURCES = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
# Worker and merge pods sized from the plan get a limit of its peak times this, at least the backend's default
# limit, and a request of the peak itself. The plan's memory error on the benchmark grid was -16.8 % to +12.3 %
# for training (the underestimate: QLoRA with checkpointing) and -5 % to +4 % for the merge, and a checkpointed
# run's peak moved by up to 15 % between two runs (docs/plan.md): a quarter more than the plan is a margin, not a
# guarantee for every swing, which is why the backend's default limit stays the floor.
HEADROOM = 1.25
MIB = 2**20


def memory_limit(spec: FinetuneJobSpec) -> str | None:
    """spec.resources.limits.memory, the worker pod's limit the plan is checked against (None: none given)."""
    value = spec.resources.limits.get("memory") if spec.resources else None
    return str(value) if value is not None else None


def initializer_resources(spec: FinetuneJobSpec) -> dict[str, dict[str, str]]:
    """RESOURCES, with the worker's memory limit when it is larger: the initializer tokenizes the whole dataset,
    so a run whose data needs a 64 GiB worker is not OOMKilled in a 4 GiB initializer first."""
    limit = memory_limit(spec)
    floor = RESOURCES["limits"]["memory"]
    if limit is None or quantity.parse(limit) <= quantity.parse(floor):
        return RESOURCES
    return {"requests": dict(RESOURCES["requests"]), "limits": {"memory": limit}}


def render_initializer_job(meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings) -> dict[str, Any]:
    """A one-pod Job: `kubetune plan --preflight` with the run's config, from the workers' pod template (same
    image, same nodes, same credentials), the model and data claims read-only and the workers' layout (the
    plan divides a pod's memory among its processes and the data among all of them). /output is an empty dir
    (the image checks it is writable; the output claim may be ReadWriteOnce and in use by a previous run's
    pod). One retry: a missing repo or a bad record stays so (the fail-fast rule), a cut transfer resumes.
    On an accelerator backend the pod has no accelerator: it plans for the CPU it runs on (training.device
    cpu, precision auto), the plan being advice there (acts_on_plan), so `device: cuda` or `fp16` is no error."""
    limit = memory_limit(spec)
    # In bytes: the trainer reads sizes, not every Kubernetes quantity form (8e9, 8E, 1.5Gi all parse here).
    memory = ["--memory", str(math.ceil(quantity.parse(limit)))] if limit else []
    on_cpu = ["--device", "cpu", "--precision", "auto"] if backends.get(spec.backend).device else []
    args = ["plan", "--preflight", "--json", *memory, *on_cpu]
    env = (
        {"name": contract.ENV_NNODES, "value": str(spec.nodes)},
        {"name": contract.ENV_NPROC_PER_NODE, "value": str(spec.procs_per_node)},
    )
    resources = initializer_resources(spec)
    role = render.PodRole(ROLE, args, ("model", "data"), env, resources=resources, scratch_output=True, fetches=True)
    job_spec = {
        "backoffLimit": 1,
        "podFailurePolicy": {"rules": [render.fail_fast_rule()]},
        "template": render.pod_template(meta, spec, settings, role),
    }
    return render.child_job(meta, render.Names.of(meta["name"]).initializer, ROLE, spec, job_spec)


# Why the initializer failed, by its exit code (kubetune.api.contract; the operator never imports the trainer).
FETCH_REASONS = {
    ExitCode.CONFIG: cond.INVALID_SPEC,  # the config, a flag or a source location (the trainer names which)
    ExitCode.DATA: cond.INVALID_DATA,
    ExitCode.MODEL: cond.INVALID_MODEL,
    ExitCode.SOURCE_MISSING: cond.SOURCE_NOT_FOUND,
    ExitCode.SOURCE_DENIED: cond.SOURCE_ACCESS_DENIED,
    ExitCode.TRANSFER: cond.SOURCE_TRANSFER_FAILED,
}


@dataclass(frozen=True)
class Outcome:
    state: str  # pending | succeeded | failed
    reason: str | None
    message: str
    plan: PlanEvent | None = None  # the succeeded pod's last word


def initializer_outcome(job: dict[str, Any] | None, pods: tuple[PodView, ...]) -> Outcome:
    """The initializer Job's outcome, its failure in the trainer's own line (e.g. `hf://org/x: no such
    repository at ...`, what status.message should carry when this ends the job), its plan when it succeeded."""
    status = (job or {}).get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    newest = sorted(pods, key=lambda p: p.created, reverse=True)
    if conditions.get("Complete", {}).get("status") == "True":
        done = next((p for p in newest if p.phase == "Succeeded"), None)
        words = last_words(done.termination_message) if done else None
        plan = words if isinstance(words, PlanEvent) else None
        return Outcome("succeeded", None, "planned" if plan else "finished without a plan", plan)
    if conditions.get("Failed", {}).get("status") != "True":
        return Outcome("pending", None, "planning")
    last = next((p for p in newest if p.phase == "Failed"), None)
    words = last_words(last.termination_message) if last else None
    message = message_of(words) or conditions["Failed"].get("message") or "the initializer failed"
    code = (last.exit_code if last else None) or 0
    return Outcome("failed", FETCH_REASONS.get(code, cond.INITIALIZER_FAILED), message)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def duration(seconds: float) -> str:
    """~45s, ~12m, ~3.5h: kubectl's PLAN column."""
    if seconds < 90:
        return f"~{seconds:.0f}s"
    return f"~{seconds / 60:.0f}m" if seconds < 5400 else f"~{seconds / 3600:.1f}h"


def acts_on_plan(spec: FinetuneJobSpec) -> bool:
    """Only CPU backends: the plan is made on the initializer's CPU, and a GPU's memory is not the pod's."""
    return backends.get(spec.backend).device is None


def sized_memory(backend: str, peak: int) -> dict[str, str]:
    """The memory of a pod planned to peak at `peak` bytes, the one sizing rule of workers and merge: the peak as
    the request (the scheduler reserves what the pod is planned to use), HEADROOM over it as the limit, the
    backend's default limit at least (a run's swing is not OOMKilled), each rounded up to a MiB."""
    default = quantity.parse(backends.get(backend).limits["memory"])
    limit = max(peak * HEADROOM, float(default))
    return {"request": f"{math.ceil(peak / MIB)}Mi", "limit": f"{math.ceil(limit / MIB)}Mi"}


def plan_summary(spec: FinetuneJobSpec, plan: PlanEvent) -> PlanSummary:
    """status.plan from the initializer's PlanEvent: per worker pod (the plan's peak is per process); the merge
    is one process. The limits sized_spec and merge_spec give, when spec.resources is omitted."""
    per_worker = plan.peak_bytes * spec.procs_per_node
    tokens = round(plan.tokens_per_epoch * plan.steps / max(1, plan.steps_per_epoch))
    seconds = plan.seconds
    rate = round(tokens / seconds, 1) if seconds else None
    unsized = spec.resources is None
    memory = sized_memory(spec.backend, per_worker)["limit"] if unsized else None
    merge = plan.merge_peak_bytes
    merge_memory = sized_memory(spec.backend, merge)["limit"] if unsized and merge is not None else None
    estimate = gib(per_worker) + (f", {duration(seconds)}" if seconds is not None else "")
    return PlanSummary(
        peak_bytes_per_worker=per_worker,
        peak=gib(per_worker),
        batch_size=plan.batch_size,
        max_batch_size=plan.max_batch_size,
        tokens=tokens,
        steps=plan.steps,
        estimated_seconds=seconds,
        tokens_per_second=rate,
        estimate=estimate,
        memory=memory,
        merge_peak_bytes=merge,
        merge_memory=merge_memory,
    )


def too_big(spec: FinetuneJobSpec, plan: PlanEvent) -> str | None:
    """The InsufficientMemory message when the plan does not fit the worker's memory limit, or its merge (which
    runs under the same spec.resources) does not, else None (also with training.ignore_plan, which the trainer's
    own refusal tells the user to set: the run starts anyway)."""
    limit = memory_limit(spec)
    if limit is None or spec.training.training.ignore_plan:
        return None
    if plan.fits is not False:
        merge = plan.merge_peak_bytes
        if not spec.merge.enabled or merge is None or merge <= quantity.parse(limit):
            return None
        return (
            f"the merge needs {gib(merge)}, spec.resources.limits.memory is {limit}; "
            "give a larger limit or set merge.enabled: false"
        )
    fit = (
        f"; training.batch_size {plan.max_batch_size} would fit"
        if plan.max_batch_size
        else "; not even training.batch_size 1 fits"
    )
    per = f" ({spec.procs_per_node} processes)" if spec.procs_per_node > 1 else ""
    return (
        f"needs {gib(plan.peak_bytes * spec.procs_per_node)} per worker{per}, "
        f"spec.resources.limits.memory is {limit}{fit}"
    )


def _sized(spec: FinetuneJobSpec, peak: int | None, limit: str | None) -> FinetuneJobSpec:
    """`spec` with the backend's resources, the memory request sized_memory gives `peak` and `limit` (the one
    status.plan shows, so the pod is what the user read); as given when spec.resources is, or when there is no
    planned peak (no plan, an accelerator backend: the backend's defaults)."""
    if spec.resources is not None or peak is None or limit is None:
        return spec
    base = backends.get(spec.backend).resources()
    resources = Resources(
        requests={**base["requests"], "memory": sized_memory(spec.backend, peak)["request"]},
        limits={**base["limits"], "memory": limit},
    )
    return spec.model_copy(update={"resources": resources})


def sized_spec(spec: FinetuneJobSpec, summary: PlanSummary | None) -> FinetuneJobSpec:
    """The spec the worker Job is rendered from: without spec.resources, sized by the plan's peak per worker
    and the limit status.plan.memory shows."""
    return _sized(spec, summary.peak_bytes_per_worker, summary.memory) if summary else spec


def merge_spec(spec: FinetuneJobSpec, summary: PlanSummary | None) -> FinetuneJobSpec:
    """The spec the merge Job is rendered from: without spec.resources, sized by the plan's merge peak (it loads
    the base, dequantized and in fp32 for a 4-bit run, and reloads what it wrote: more than a QLoRA worker)."""
    return _sized(spec, summary.merge_peak_bytes, summary.merge_memory) if summary else spec
