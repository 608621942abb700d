"""What a FinetuneJob should look like next: observed state in, a plan out. Pure.

The daemon in handlers.py observes (the FinetuneJob, its Jobs, its worker pods,
the rank-0 log tail), calls `decide`, and carries the plan out: create what is
missing, patch or delete Jobs, patch status, emit events. Keeping the decision
pure means every transition (suspend, deadline, retries, merge, TTL) is tested
without a cluster, and a restarted operator reaches the same decision from the
same observation: that is what makes it idempotent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubetune.api import conditions as cond
from kubetune.api import contract
from kubetune.api.finetunejob import FinetuneJobSpec, FinetuneJobStatus, PlanSummary, Progress, name_problem
from kubetune.api.redact import redact, redact_value
from kubetune.operator.initializer import (
    acts_on_plan,
    initializer_outcome,
    merge_spec,
    plan_summary,
    render_initializer_job,
    sized_spec,
    too_big,
)
from kubetune.operator.observed import Observed, PodView, iso, job_condition, ownership, parse_time
from kubetune.operator.render import (
    Names,
    render_configmap,
    render_merge_job,
    render_network_policy,
    render_service,
    render_worker_job,
)
from kubetune.operator.reports import failure_message, merge_result, parse_progress, result_location, summary_of
from kubetune.operator.settings import PodSettings
from kubetune.operator.validation import credential_problems, policy_problems, spec_problems

TERMINAL = ("Succeeded", "Failed")
CONDITION_TYPES = tuple(cond.CONDITION_TYPES)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)  # manifests; an existing one is adopted
    suspend_workers: bool | None = None  # patch the worker Job's spec.suspend
    patch_workers: dict[str, Any] = field(default_factory=dict)  # runPolicy edits onto the worker Job's spec
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] = field(default_factory=dict)  # the whole new status
    events: list[Event] = field(default_factory=list)
    done: bool = False  # nothing left to watch: the daemon may stop


def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """Replace one condition; its lastTransitionTime moves only when its status does."""
    old = next((c for c in conditions if c.get("type") == type_), None)
    changed = old is None or old.get("status") != status
    new = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": iso(now) if changed else old.get("lastTransitionTime"),
    }
    rest = [c for c in conditions if c.get("type") != type_]
    return sorted([*rest, new], key=lambda c: CONDITION_TYPES.index(c["type"]) if c["type"] in CONDITION_TYPES else 99)


class _Status:
    """A mutable copy of status that records a transition (and its event) when the phase changes."""

    def __init__(self, old: dict[str, Any], now: datetime):
        self.data = dict(old)
        self.data.setdefault("conditions", [])
        self.now = now
        self.events: list[Event] = []

    @property
    def current(self) -> str | None:
        return self.data.get("phase")

    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        self.data["conditions"] = set_condition(self.data["conditions"], type_, status, reason, message, self.now)

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if self.data.get("phase") != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.data["phase"] = phase
        self.data["message"] = message


@dataclass
class _Pass:
    """One reconcile pass: what every step reads, and the plan and status they build."""

    meta: dict[str, Any]
    spec: FinetuneJobSpec
    seen: Observed
    settings: PodSettings
    st: _Status
    plan: Plan = field(default_factory=Plan)

    @property
    def names(self) -> Names:
        return Names.of(self.meta["name"])


Step = Callable[[_Pass], Plan | None]  # a Plan ends the pass, None goes on to the next step


def decide(
    meta: dict[str, Any], raw_spec: dict[str, Any], status: dict[str, Any], seen: Observed, settings: PodSettings
) -> Plan:
    """The next plan, with every string it writes into status and Events redacted (kubetune.api.redact):
    the trainer's messages it copies and the spec's locations may carry a presigned URL or a token."""
    plan = _decide(meta, raw_spec, status, seen, settings)
    plan.status = redact_value(plan.status)
    plan.events = [dataclasses.replace(e, message=redact(e.message)) for e in plan.events]
    return plan


def _decide(
    meta: dict[str, Any], raw_spec: dict[str, Any], status: dict[str, Any], seen: Observed, settings: PodSettings
) -> Plan:
    """The next plan, as named steps in order (like a Kubeflow reconcile): the first that returns a plan ends
    the pass. The deadline comes before the children, so a job past it never gets a child created."""
    st = _Status(status or {}, seen.now)
    st.data["conditions"] = [c for c in st.data["conditions"] if c.get("type") != cond.RECONCILE_ERROR]  # this one ran
    spec, problems = spec_problems(raw_spec)
    name = name_problem(meta["name"])
    if spec is None or name:
        return _invalid(Plan(), st, [name] if name else problems)
    # The policy and the credential check admit a job once, before any child exists: a running job (one an
    # older operator admitted) is not stopped by a later change.
    if st.current is None and (leaked := credential_problems(spec.training.model_dump(mode="json"), "spec.training")):
        return _invalid(Plan(), st, leaked)
    denied = policy_problems(spec, meta["namespace"], settings) if st.current is None else []
    if denied:
        return _invalid(Plan(), st, denied, cond.NOT_ALLOWED)
    run = _Pass(meta, spec, seen, settings, st)
    if st.current in TERMINAL:
        return _expire(run)
    steps: tuple[Step, ...] = (
        _refused,
        _ownership,
        _deadline,
        _initializing,
        _ensure_children,
        _restarts,
        _merging,
        _suspension,
        _observe_workers,
    )
    for step in steps:
        plan = step(run)
        if plan is not None:
            return plan
    return _finish(run.plan, st)


def _invalid(plan: Plan, st: _Status, problems: list[str], reason: str = cond.INVALID_SPEC) -> Plan:
    message = "; ".join(problems)
    st.condition(cond.FAILED, "True", reason, message)
    st.phase("Failed", reason, message, warning=True)
    st.data.setdefault("completionTime", iso(st.now))
    return _finish(plan, st, done=True)


def _ownership(run: _Pass) -> Plan | None:
    """Someone else's object under our name is never adopted; the previous run's is waited for (GC)."""
    st = run.st
    if run.seen.not_ours:
        return _not_ours(run.plan, st, *run.seen.not_ours[0])
    for job in (run.seen.initializer, run.seen.workers, run.seen.merge):
        if job is None or not run.meta.get("uid"):
            continue
        found = ownership(job, run.meta)
        if found != "ours":
            return _not_ours(run.plan, st, found, "Job", job["metadata"]["name"])
    return None


def _not_ours(plan: Plan, st: _Status, found: str, kind: str, name: str) -> Plan:
    if found == "previous":  # delete + re-apply at once: the old children are still being collected
        message = f"{kind} {name} of a deleted FinetuneJob with this name is still being garbage-collected"
        st.phase(st.current if st.current in ("Pending", "Suspended") else "Pending", cond.WAITING_FOR_CLEANUP, message)
        return _finish(plan, st)
    message = f"{kind} {name} exists and is not owned by this FinetuneJob"
    st.condition(cond.FAILED, "True", cond.NAME_CONFLICT, message)
    st.phase("Failed", cond.NAME_CONFLICT, message, warning=True)
    st.data["completionTime"] = iso(st.now)
    return _finish(plan, st, done=True)


def _refused(run: _Pass) -> Plan | None:
    """The API server refused to create a child (the handlers observed it and asked again). 400/422 (invalid)
    will not change: the job fails with the server's words. 403 (RBAC, quota, admission) may be fixed by an
    admin: reported, and retried at the next poll."""
    refusal, st = run.seen.refused, run.st
    if refusal is None:
        return None
    text = redact(f"creating {refusal.kind} {refusal.name} was refused ({refusal.code}): {refusal.message}")
    if refusal.code == 403:
        st.condition(cond.CREATED, "False", cond.FORBIDDEN, text)
        if st.data.get("message") != text:
            st.events.append(Event("Warning", cond.FORBIDDEN, text))
        st.data["phase"], st.data["message"] = st.current or "Pending", text
        return _finish(run.plan, st)
    return _fail(run.plan, st, cond.INVALID if refusal.code in (400, 422) else cond.CREATE_REFUSED, text)


def reconcile_error(old: dict[str, Any], now: datetime, kind: str, message: str) -> dict[str, Any]:
    """The status after a pass that raised (not an API refusal): the error as a condition, retried next poll."""
    st = _Status(old, now)
    st.condition(cond.RECONCILE_ERROR, "True", kind, redact(f"retrying at the next poll: {message}")[:1000])
    return redact_value(checked(st.data))


def volume_path(ref: Any, leaf: str) -> str:
    """Where an output lands, as a user finds it: pvc://<claim>/<subPath>/<leaf>."""
    sub = ref.sub_path.strip("/")
    return f"pvc://{ref.claim_name}/{sub + '/' if sub else ''}{leaf}"


def _deadline(run: _Pass) -> Plan | None:
    """Over the whole run (training and merge); the worker Job also carries it as a backstop."""
    deadline = run.spec.run_policy.active_deadline_seconds
    started = parse_time(run.st.data.get("startTime"))
    job_failed = job_condition(run.seen.workers, "Failed")
    if not deadline or not (
        (started and run.seen.now - started > timedelta(seconds=deadline))
        or (job_failed and job_failed.get("reason") == cond.DEADLINE_EXCEEDED)
    ):
        return None
    run.plan.delete += [("Job", run.names.workers), ("Job", run.names.merge)]
    if run.seen.initializer is not None:
        run.plan.delete.append(("Job", run.names.initializer))
    return _fail(
        run.plan, run.st, cond.DEADLINE_EXCEEDED, f"activeDeadlineSeconds={deadline} passed before the job finished"
    )


def _initializing(run: _Pass) -> Plan | None:
    """Every run starts with the initializer Job (initializer.py): it fetches remote sources, then plans, and
    no worker exists before it completed (like Kubeflow Trainer's model and dataset initializers). Its failure
    ends the job with the trainer's line; a plan that cannot fit the worker's memory limit ends it too."""
    st, seen, spec = run.st, run.seen, run.spec
    initialized = any(c.get("type") == cond.INITIALIZED and c.get("status") == "True" for c in st.data["conditions"])
    if initialized or seen.workers is not None or st.current == "Merging":
        return None
    outcome = initializer_outcome(seen.initializer, seen.initializer_pods)
    if outcome.state == "failed":
        reason = outcome.reason or cond.INITIALIZER_FAILED
        st.condition(cond.INITIALIZED, "False", reason, outcome.message)
        return _fail(run.plan, st, reason, outcome.message)
    if outcome.state == "succeeded":
        return _planned(run, outcome.plan)
    if seen.initializer is None and spec.run_policy.suspend:  # created suspended: no pod until it is resumed
        return _suspended(run)
    _resumed(st)
    if not seen.has_config:
        run.plan.create.append(render_configmap(run.meta, spec))  # the initializer reads the run's config
    _ensure_network_policy(run)
    if seen.initializer is None:
        run.plan.create.append(render_initializer_job(run.meta, spec, run.settings))
        if st.current in (None, "Suspended"):  # a job created suspended creates its first child on resume
            st.condition(
                cond.CREATED, "True", cond.CHILDREN_CREATED, f"ConfigMap and initializer Job {run.names.initializer}"
            )
    locations = ", ".join(spec.remote_locations())
    st.data.setdefault("startTime", iso(st.now))  # activeDeadlineSeconds covers the preflight too
    if locations:
        st.condition(cond.INITIALIZED, "False", cond.FETCHING, locations)
        st.phase("Initializing", cond.INITIALIZING, f"fetching into the cache, then planning: {locations}")
    else:
        st.condition(cond.INITIALIZED, "False", cond.PLANNING, "reading the config and the data")
        st.phase("Initializing", cond.INITIALIZING, "planning the run from its config and data")
    if not _create_failed(st, seen, run.names.initializer):
        _waiting(st, seen.initializer_pods, "initializer pod")
    return _finish(run.plan, st)


def _planned(run: _Pass, plan: contract.PlanEvent | None) -> Plan | None:
    """The initializer succeeded: its plan goes into status.plan (CPU backends), sizes the workers when
    spec.resources is omitted, and fails the job, before any worker pod exists, when it cannot fit the limit."""
    st, spec = run.st, run.spec
    if plan is None or not acts_on_plan(spec):
        why = "finished without a plan" if plan is None else f"the plan is a CPU one: not used on {spec.backend}"
        st.condition(cond.INITIALIZED, "True", cond.NO_PLAN, why)
        return None  # the workers are created by this same pass
    summary = plan_summary(spec, plan)
    st.data["plan"] = summary.model_dump(by_alias=True, exclude_none=True)
    problem = too_big(spec, plan)
    st.condition(cond.INITIALIZED, "True", cond.PLANNED, f"plan: {summary.estimate}")
    if problem:
        return _fail(run.plan, st, cond.INSUFFICIENT_MEMORY, problem)
    return None


def _planned_spec(
    run: _Pass, size: Callable[[FinetuneJobSpec, PlanSummary | None], FinetuneJobSpec] = sized_spec
) -> FinetuneJobSpec:
    """The spec the worker Job (with merge_spec, the merge Job) is rendered from: sized by status.plan (what a
    restarted operator reads too)."""
    recorded = run.st.data.get("plan")
    return size(run.spec, PlanSummary.model_validate(recorded) if recorded else None)


def _ensure_children(run: _Pass) -> None:
    """Create what is missing. An existing one is adopted only when it is ours (Cluster.create checks)."""
    seen, phase, plan = run.seen, run.st.current, run.plan
    if not seen.has_config:
        plan.create.append(render_configmap(run.meta, run.spec))
    if not seen.has_service:
        plan.create.append(render_service(run.meta))
    _ensure_network_policy(run)
    if phase == "Merging" and seen.merge is None:
        plan.create.append(render_merge_job(run.meta, _planned_spec(run, merge_spec), run.settings))  # deleted: again
    if phase != "Merging" and seen.workers is None:
        plan.create.append(render_worker_job(run.meta, _planned_spec(run), run.settings))
        if phase in (None, "Initializing"):
            run.st.condition(
                cond.CREATED, "True", cond.CHILDREN_CREATED, f"ConfigMap, Service and Job {run.names.workers}"
            )
            run.st.phase("Pending", cond.CREATED_PHASE, f"waiting for {run.spec.nodes} worker pod(s)")


def _ensure_network_policy(run: _Pass) -> None:
    """Before any pod of the run exists: the pods accept connections from the same run only."""
    if run.settings.network_policy and not run.seen.has_network_policy:
        run.plan.create.append(render_network_policy(run.meta, run.settings))


def _restarts(run: _Pass) -> None:
    _count_restarts(run.st, run.seen.worker_pods)
    _run_policy(run)


def _run_policy(run: _Pass) -> None:
    """runPolicy.backoffLimit and activeDeadlineSeconds stay editable: an edit reaches the worker Job (both are
    mutable fields of a batch/v1 Job) instead of being read by the operator and ignored by the Job controller."""
    job_spec = (run.seen.workers or {}).get("spec")
    if job_spec is None:
        return
    policy = run.spec.run_policy
    wanted = {"backoffLimit": policy.backoff_limit, "activeDeadlineSeconds": policy.active_deadline_seconds or None}
    run.plan.patch_workers = {k: v for k, v in wanted.items() if job_spec.get(k) != v}


def _suspension(run: _Pass) -> Plan | None:
    """runPolicy.suspend: the Job controller removes the pods (SIGTERM -> checkpoint) and recreates them.

    A queued job's suspension is Kueue's (it creates the Job suspended and unsuspends it on admission):
    the operator never writes spec.suspend then, and reports the wait instead."""
    st, seen, spec = run.st, run.seen, run.spec
    job_suspended = bool(((seen.workers or {}).get("spec") or {}).get("suspend"))
    queue = spec.scheduling.queue_name
    if queue:
        if seen.workers is not None and job_suspended:
            st.phase("Pending", cond.QUEUED, f"queued in Kueue LocalQueue {queue}: waiting for admission")
            return _finish(run.plan, st)
        return None
    want = spec.run_policy.suspend
    if seen.workers is not None and job_suspended != want:
        run.plan.suspend_workers = want
    if want:
        return _suspended(run)
    if _resumed(st):
        st.phase("Pending", cond.RESUMED, "resuming from the last checkpoint")
    return None


def _suspended(run: _Pass) -> Plan:
    """Suspended, with its pods stopping or gone. Also before the initializer: a job created suspended gets
    no pod at all until it is resumed (an initializer already running when suspend is set finishes, and the
    workers are then created suspended)."""
    st = run.st
    active = [p for p in run.seen.worker_pods if p.phase in ("Pending", "Running")]
    st.condition(cond.RUNNING, "False", cond.SUSPENDED_REASON, "")
    st.condition(cond.SUSPENDED, "True", cond.SUSPENDED_REASON, "runPolicy.suspend is true")
    st.phase(
        "Suspended",
        cond.SUSPENDED_REASON,
        f"suspended; {len(active)} worker pod(s) still stopping"
        if active
        else "suspended; checkpoints are kept on the output volume",
    )
    st.data.pop("startTime", None)  # like a Job: the deadline restarts on resume
    return _finish(run.plan, st)


def _resumed(st: _Status) -> bool:
    """Suspended=False when runPolicy.suspend went back to false; True when it just did."""
    if st.current != "Suspended":
        return False
    st.condition(cond.SUSPENDED, "False", cond.RESUMED, "")
    return True


def _observe_workers(run: _Pass) -> Plan | None:
    """The worker Job's outcome, progress from the rank-0 log, and Running once a pod runs."""
    st, seen, spec = run.st, run.seen, run.spec
    if seen.workers is None:
        return None
    job_failed = job_condition(seen.workers, "Failed")
    if job_failed:
        fallback = f"{job_failed.get('reason', 'Failed')}: {job_failed.get('message', '')}".strip(": ")
        reason = job_failed.get("reason") or cond.WORKERS_FAILED
        return _fail(run.plan, st, reason, failure_message(seen.worker_pods, fallback))
    progress = parse_progress(seen.rank0_log)
    if progress:
        st.data["progress"] = _vs_plan(progress, st.data.get("plan"))
        if progress.get("step") is not None and progress.get("totalSteps"):
            st.data["progressSummary"] = f"{progress['step']}/{progress['totalSteps']}"
    if job_condition(seen.workers, "Complete"):
        return _trained(run)
    # Running means a pod runs: the Job's `active` also counts pods still Pending (pulling, unschedulable).
    running = [p for p in seen.worker_pods if p.phase == "Running"]
    if running:
        st.data.setdefault("startTime", iso(seen.now))
        st.condition(cond.RUNNING, "True", cond.WORKERS_RUNNING, f"{len(running)}/{spec.nodes} worker pod(s)")
        progress = st.data.get("progressSummary")
        st.phase("Running", cond.RUNNING_PHASE, f"training{' step ' + progress if progress else ''}")
    elif not _create_failed(st, seen, run.names.workers):
        _waiting(st, seen.worker_pods)
    return None


def _create_failed(st: _Status, seen: Observed, job_name: str) -> bool:
    """The Job controller cannot create this Job's pods (quota, LimitRange, PriorityClass, a policy engine): its
    FailedCreate Event is the only trace, so status says it (Running=False) and a Warning Event once."""
    message = next((m for name, m in seen.create_failures if name == job_name), None)
    if message is None:
        return False
    text = redact(f"the Job controller cannot create the pods of Job {job_name}: {message}")
    st.condition(cond.RUNNING, "False", cond.FAILED_CREATE, text)
    if st.data.get("message") != text:
        st.events.append(Event("Warning", cond.FAILED_CREATE, text))
    st.data["message"] = text
    return True


def _waiting(st: _Status, pods: tuple[PodView, ...], what: str = "worker pod") -> None:
    """Why no worker (or initializer) runs yet, in status and (for a reason that needs someone's action) as a
    Warning Event."""
    waiting = sorted((p for p in pods if p.phase == "Pending" and p.waiting), key=lambda p: p.created)
    if not waiting:
        return
    pod = waiting[-1]
    reason, detail = pod.waiting or ("", "")
    message = redact(f"waiting for {what} {pod.name}: {reason}" + (f": {detail}" if detail else ""))
    st.condition(cond.RUNNING, "False", reason, message)
    if st.data.get("message") != message and reason in cond.POD_WAITING_REASONS:
        st.events.append(Event("Warning", reason, message))
    st.data["message"] = message


def _trained(run: _Pass) -> Plan:
    st, spec = run.st, run.spec
    summary = summary_of(run.seen.worker_pods)
    if summary:
        _apply_summary(st, summary)
    st.data["adapterPath"] = volume_path(spec.storage.output, "adapter")
    location = result_location(summary)
    if location:
        st.data["resultLocation"] = location
    st.condition(cond.RUNNING, "False", cond.TRAINING_SUCCEEDED, "")
    done_msg = _trained_message(summary)
    if not spec.merge.enabled:
        return _succeed(run.plan, st, done_msg)
    if run.seen.merge is None:
        run.plan.create.append(render_merge_job(run.meta, _planned_spec(run, merge_spec), run.settings))
    st.phase("Merging", cond.TRAINING_SUCCEEDED, f"{done_msg}; merging the adapter into the base model")
    return _finish(run.plan, st)


def _merging(run: _Pass) -> Plan | None:
    if run.st.current != "Merging":
        return None
    plan, st, seen = run.plan, run.st, run.seen
    if seen.merge is None:
        return _finish(plan, st)  # (re)created by this pass: see _ensure_children
    failed = job_condition(seen.merge, "Failed")
    if failed:
        fallback = f"merge Job {run.names.merge} failed: {failed.get('reason', '')}"
        return _fail(plan, st, cond.MERGE_FAILED, failure_message(seen.merge_pods, fallback))
    if job_condition(seen.merge, "Complete"):
        st.data["mergedPath"] = volume_path(run.spec.storage.output, "merged")
        location = result_location(merge_result(seen.merge_pods))
        if location:  # the merge pushed again, the merged model with it: that copy is the result
            st.data["resultLocation"] = location
        return _succeed(plan, st, "adapter trained and merged" + (f"; pushed to {location}" if location else ""))
    _create_failed(st, seen, run.names.merge)
    return _finish(plan, st)


def _succeed(plan: Plan, st: _Status, message: str) -> Plan:
    st.condition(cond.SUCCEEDED, "True", cond.SUCCEEDED_REASON, message)
    st.phase("Succeeded", cond.SUCCEEDED_REASON, message)
    st.data["completionTime"] = iso(st.now)
    return _finish(plan, st)


def _fail(plan: Plan, st: _Status, reason: str, message: str) -> Plan:
    st.condition(cond.RUNNING, "False", reason, "")
    st.condition(cond.FAILED, "True", reason, message)
    st.phase("Failed", reason, message, warning=True)
    st.data["completionTime"] = iso(st.now)
    return _finish(plan, st)


def _expire(run: _Pass) -> Plan:
    """ttlSecondsAfterFinished: remove the children of a finished job, keep the FinetuneJob and its status."""
    plan, st, seen, names = run.plan, run.st, run.seen, run.names
    ttl = run.spec.run_policy.ttl_seconds_after_finished
    finished = parse_time(st.data.get("completionTime"))
    if ttl is None or finished is None:
        return _finish(plan, st, done=True)
    if st.now - finished < timedelta(seconds=ttl):
        return _finish(plan, st)  # keep watching until it expires
    present = [
        ("ConfigMap", names.config) if seen.has_config else None,
        ("Job", names.initializer) if seen.initializer is not None else None,
        ("Service", names.service) if seen.has_service else None,
        ("NetworkPolicy", names.network_policy) if seen.has_network_policy else None,
        ("Job", names.workers) if seen.workers is not None else None,
        ("Job", names.merge) if seen.merge is not None else None,
    ]
    plan.delete = [p for p in present if p]
    if plan.delete:
        st.events.append(Event("Normal", cond.TTL_EXPIRED, f"deleted {len(plan.delete)} child object(s)"))
    return _finish(plan, st, done=not plan.delete)


def _count_restarts(st: _Status, pods: tuple[PodView, ...]) -> None:
    """Every pod after the first for an index is a restart (preempted, evicted or retried).

    status.workerPods remembers the newest pod counted per index, so a pod is counted once even across
    operator restarts, and pods that came and went between two looks are still counted while the Job keeps them.
    """
    recorded: dict[str, str] = dict(st.data.get("workerPods") or {})
    by_index: dict[str, list[PodView]] = {}
    for pod in sorted(pods, key=lambda p: p.created):
        if pod.index is not None:
            by_index.setdefault(str(pod.index), []).append(pod)
    restarts = int(st.data.get("restarts") or 0)
    for index, group in by_index.items():
        names = [p.name for p in group]
        last = recorded.get(index)
        new = names[names.index(last) + 1 :] if last in names else names if last else names[1:]
        restarts += len(new)
        for pod in new:
            st.events.append(Event("Normal", cond.WORKER_RESTARTED, f"worker {index} restarted as {pod}"))
        recorded[index] = names[-1]
    st.data["restarts"] = restarts
    if recorded:
        st.data["workerPods"] = dict(sorted(recorded.items(), key=lambda kv: int(kv[0])))


def _apply_summary(st: _Status, summary: contract.SummaryEvent) -> None:
    """The finished run's figures over the last progress read (the summary has the whole run's)."""
    final = Progress(
        step=summary.steps,
        total_steps=summary.steps,
        loss=summary.final_loss,
        epoch=summary.epochs,
        tokens_per_second=summary.tokens_per_second,
        eta_seconds=0,
    )
    progress = {**(st.data.get("progress") or {}), **final.model_dump(by_alias=True, exclude={"speed_vs_plan"})}
    st.data["progress"] = _vs_plan(progress, st.data.get("plan"))
    st.data["progressSummary"] = f"{summary.steps}/{summary.steps}"
    if summary.best_step is not None:  # an eval chose the adapter: which step, by what, how good
        st.data.update(evalMetric=summary.eval_metric, bestStep=summary.best_step, bestValue=summary.best_value)


def _vs_plan(progress: dict[str, Any], plan: dict[str, Any] | None) -> dict[str, Any]:
    """progress.speedVsPlan: the run's measured tokens per second over the plan's (both for the whole job)."""
    planned = PlanSummary.model_validate(plan).tokens_per_second if plan else None
    actual = progress.get("tokensPerSecond")
    if planned and actual:
        return {**progress, "speedVsPlan": round(actual / planned, 2)}
    return progress


def _trained_message(summary: contract.SummaryEvent | None) -> str:
    if not summary or summary.first_loss is None or summary.final_loss is None:
        return "training succeeded"
    return f"trained {summary.steps} steps, loss {summary.first_loss:.4f} -> {summary.final_loss:.4f}"


def checked(status: dict[str, Any]) -> dict[str, Any]:
    """The status through FinetuneJobStatus: a misspelled or mistyped key fails here (and in the tests)
    instead of being pruned silently by the API server. Keys stay as given; nothing is defaulted in."""
    return FinetuneJobStatus.model_validate(status).model_dump(by_alias=True, exclude_unset=True)


def _finish(plan: Plan, st: _Status, done: bool = False) -> Plan:
    plan.status = checked(st.data)
    plan.events = st.events
    plan.done = done
    return plan
