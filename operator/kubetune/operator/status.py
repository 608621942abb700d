"""What a FinetuneJob should look like next: observed state in, a plan out. Pure.

The daemon in handlers.py observes (the FinetuneJob, its Jobs, its worker pods,
the rank-0 log tail), calls `decide`, and carries the plan out: create what is
missing, patch or delete Jobs, patch status, emit events. Keeping the decision
pure means every transition (suspend, deadline, retries, merge, TTL) is tested
without a cluster, and a restarted operator reaches the same decision from the
same observation: that is what makes it idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubetune.api.finetunejob import FinetuneJobSpec
from kubetune.operator.render import (
    CONTAINER,
    EXIT_PREEMPTED,
    Names,
    Settings,
    render_configmap,
    render_merge_job,
    render_service,
    render_worker_job,
)

TERMINAL = ("Succeeded", "Failed")
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
CONDITION_TYPES = ("Created", "Running", "Succeeded", "Failed", "Suspended")
# Collectives each backend's image cannot run (ccl needs the cpu-ccl image; nccl a CUDA GPU; xccl an XPU).
UNAVAILABLE_COLLECTIVES = {
    "cpu": {"ccl", "nccl", "xccl"},
    "cpu-ccl": {"nccl", "xccl"},
    "xpu": {"nccl", "ccl"},
    "cuda": {"ccl", "xccl"},
}


@dataclass(frozen=True)
class PodView:
    """The parts of a pod the decision needs."""

    name: str
    index: int | None
    phase: str  # Pending | Running | Succeeded | Failed
    created: str = ""
    exit_code: int | None = None
    termination_message: str | None = None

    @staticmethod
    def of(pod: dict[str, Any]) -> PodView:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        index = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
        exit_code = message = None
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == CONTAINER:
                terminated = (cs.get("state") or {}).get("terminated")
                if terminated:
                    exit_code, message = terminated.get("exitCode"), terminated.get("message")
        return PodView(
            name=meta.get("name", ""),
            index=int(index) if index not in (None, "") else None,
            phase=status.get("phase") or "Pending",
            created=meta.get("creationTimestamp") or "",
            exit_code=exit_code,
            termination_message=message,
        )


@dataclass(frozen=True)
class Observed:
    now: datetime
    has_config: bool = False
    has_service: bool = False
    workers: dict[str, Any] | None = None  # the worker Job as the API returns it
    merge: dict[str, Any] | None = None
    worker_pods: tuple[PodView, ...] = ()
    merge_pods: tuple[PodView, ...] = ()
    rank0_log: str | None = None  # the tail of the newest rank-0 pod's log


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)  # manifests; an existing one is adopted
    suspend_workers: bool | None = None  # patch the worker Job's spec.suspend
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] = field(default_factory=dict)  # the whole new status
    events: list[Event] = field(default_factory=list)
    done: bool = False  # nothing left to watch: the daemon may stop


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def spec_problems(raw: dict[str, Any]) -> tuple[FinetuneJobSpec | None, list[str]]:
    """Parse the spec; every problem at once, each naming its field (`spec.training.lr: ...`)."""
    try:
        spec = FinetuneJobSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in ("spec", *err["loc"]))
            problems.append(f"{where}: {err['msg']}")
        return None, problems
    problems = []
    if spec.training.distributed.backend in UNAVAILABLE_COLLECTIVES[spec.backend]:
        problems.append(
            f"spec.training.distributed.backend: {spec.training.distributed.backend!r} does not run on backend "
            f"{spec.backend!r} (leave it 'auto')"
        )
    if spec.backend in ("xpu", "cuda") and spec.training.training.device not in ("auto", spec.backend):
        problems.append(
            f"spec.training.training.device: {spec.training.training.device!r} on backend {spec.backend!r} "
            "would leave the requested accelerator idle"
        )
    return (spec if not problems else None), problems


def parse_progress(log: str | None) -> dict[str, Any] | None:
    """The last `{"event": "progress", ...}` line of a log tail (other lines are ignored)."""
    for line in reversed((log or "").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "progress":
            return record
    return None


def parse_termination(message: str | None) -> dict[str, Any] | None:
    """The trainer's termination message (JSON); a plain-text one (log fallback) becomes {"message": ...}."""
    if not message:
        return None
    try:
        record = json.loads(message)
    except ValueError:
        return {"message": message.strip().splitlines()[-1] if message.strip() else ""}
    return record if isinstance(record, dict) else None


def progress_status(record: dict[str, Any]) -> dict[str, Any]:
    keys = {
        "step": "step",
        "totalSteps": "total_steps",
        "loss": "loss",
        "epoch": "epoch",
        "tokensPerSecond": "tokens_per_second",
        "etaSeconds": "eta_seconds",
    }
    return {k: record.get(v) for k, v in keys.items()}


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


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def volume_path(ref: Any, leaf: str) -> str:
    """Where an output lands, as a user finds it: pvc://<claim>/<subPath>/<leaf>."""
    sub = ref.sub_path.strip("/")
    return f"pvc://{ref.claim_name}/{sub + '/' if sub else ''}{leaf}"


def _failure_message(pods: tuple[PodView, ...], fallback: str) -> str:
    """The trainer's own words from the newest failed pod, else what the Job controller says."""
    for pod in sorted(pods, key=lambda p: p.created, reverse=True):
        if pod.phase == "Failed" and pod.exit_code not in (None, 0, EXIT_PREEMPTED):
            record = parse_termination(pod.termination_message)
            if record and record.get("message"):
                return f"{pod.name} exited {pod.exit_code}: {record['message']}"
            return f"{pod.name} exited {pod.exit_code}"
    return fallback


class _Status:
    """A mutable copy of status that records a transition (and its event) when the phase changes."""

    def __init__(self, old: dict[str, Any], now: datetime):
        self.old_phase = old.get("phase")
        self.data = dict(old)
        self.data.setdefault("conditions", [])
        self.now = now
        self.events: list[Event] = []

    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        self.data["conditions"] = set_condition(self.data["conditions"], type_, status, reason, message, self.now)

    def phase(self, phase: str, reason: str, message: str, warning: bool = False) -> None:
        if self.data.get("phase") != phase:
            self.events.append(Event("Warning" if warning else "Normal", reason, message))
        self.data["phase"] = phase
        self.data["message"] = message


def decide(meta: dict[str, Any], raw_spec: dict[str, Any], status: dict[str, Any], seen: Observed,
           settings: Settings) -> Plan:  # fmt: skip
    now = seen.now
    st = _Status(status or {}, now)
    plan = Plan()
    names = Names.of(meta["name"])

    spec, problems = spec_problems(raw_spec)
    if spec is None:
        message = "; ".join(problems)
        st.condition("Failed", "True", "InvalidSpec", message)
        st.phase("Failed", "InvalidSpec", message, warning=True)
        st.data.setdefault("completionTime", iso(now))
        return _finish(plan, st, done=True)

    phase = st.data.get("phase")
    if phase in TERMINAL:
        return _expire(plan, st, spec, seen, names)

    # Someone else's object under our name: never adopt it.
    for job in (seen.workers, seen.merge):
        if job is not None and meta.get("uid") and not _owned_by(job, meta["uid"]):
            message = f"Job {job['metadata']['name']} exists and is not owned by this FinetuneJob"
            st.condition("Failed", "True", "NameConflict", message)
            st.phase("Failed", "NameConflict", message, warning=True)
            st.data["completionTime"] = iso(now)
            return _finish(plan, st, done=True)

    # Children. Creating an existing one adopts it (the handler treats 409 as success).
    if not seen.has_config:
        plan.create.append(render_configmap(meta, spec))
    if not seen.has_service:
        plan.create.append(render_service(meta))
    if phase == "Merging" and seen.merge is None:
        plan.create.append(render_merge_job(meta, spec, settings))  # deleted by hand: the merge runs again
    if phase != "Merging" and seen.workers is None:
        plan.create.append(render_worker_job(meta, spec, settings))
        if phase is None:
            st.condition("Created", "True", "ChildrenCreated", f"ConfigMap, Service and Job {names.workers}")
            st.phase("Pending", "Created", f"waiting for {spec.nodes} worker pod(s)")

    # Deadline over the whole run (training and merge); the worker Job also carries it as a backstop.
    deadline = spec.run_policy.active_deadline_seconds
    started = parse_time(st.data.get("startTime"))
    job_failed = job_condition(seen.workers, "Failed")
    if deadline and (
        (started and now - started > timedelta(seconds=deadline))
        or (job_failed and job_failed.get("reason") == "DeadlineExceeded")
    ):
        message = f"activeDeadlineSeconds={deadline} passed before the job finished"
        plan.delete += [("Job", names.workers), ("Job", names.merge)]
        return _fail(plan, st, "DeadlineExceeded", message)

    _count_restarts(st, seen.worker_pods)

    if phase == "Merging":
        return _merging(plan, st, spec, seen, names)

    # Suspend / resume: the Job controller removes the pods (SIGTERM -> checkpoint) and recreates them.
    want_suspend = spec.run_policy.suspend
    if seen.workers is not None and bool((seen.workers.get("spec") or {}).get("suspend")) != want_suspend:
        plan.suspend_workers = want_suspend
    if want_suspend:
        active = [p for p in seen.worker_pods if p.phase in ("Pending", "Running")]
        st.condition("Running", "False", "Suspended", "")
        st.condition("Suspended", "True", "Suspended", "runPolicy.suspend is true")
        st.phase("Suspended", "Suspended", f"suspended; {len(active)} worker pod(s) still stopping"
                 if active else "suspended; checkpoints are kept on the output volume")  # fmt: skip
        st.data.pop("startTime", None)  # like a Job: the deadline restarts on resume
        return _finish(plan, st)
    if phase == "Suspended":
        st.condition("Suspended", "False", "Resumed", "")
        st.phase("Pending", "Resumed", "resuming from the last checkpoint")

    if seen.workers is None:
        return _finish(plan, st)

    if job_failed:
        fallback = f"{job_failed.get('reason', 'Failed')}: {job_failed.get('message', '')}".strip(": ")
        return _fail(
            plan, st, job_failed.get("reason") or "WorkersFailed", _failure_message(seen.worker_pods, fallback)
        )

    record = parse_progress(seen.rank0_log)
    if record:
        st.data["progress"] = progress_status(record)
        if record.get("step") is not None and record.get("total_steps"):
            st.data["progressSummary"] = f"{record['step']}/{record['total_steps']}"

    if job_condition(seen.workers, "Complete"):
        summary = _summary(seen.worker_pods)
        if summary:
            _apply_summary(st, summary)
        st.data["adapterPath"] = volume_path(spec.storage.output, "adapter")
        st.condition("Running", "False", "TrainingSucceeded", "")
        done_msg = _trained_message(summary)
        if spec.merge.enabled:
            if seen.merge is None:
                plan.create.append(render_merge_job(meta, spec, settings))
            st.phase("Merging", "TrainingSucceeded", f"{done_msg}; merging the adapter into the base model")
            return _finish(plan, st)
        return _succeed(plan, st, done_msg)

    running = [p for p in seen.worker_pods if p.phase == "Running"]
    active = int(((seen.workers.get("status") or {}).get("active")) or 0)
    if running or active:
        st.data.setdefault("startTime", iso(now))
        st.condition("Running", "True", "WorkersRunning", f"{len(running) or active}/{spec.nodes} worker pod(s)")
        progress = st.data.get("progressSummary")
        st.phase("Running", "Running", f"training{' step ' + progress if progress else ''}")
    return _finish(plan, st)


def _merging(plan: Plan, st: _Status, spec: FinetuneJobSpec, seen: Observed, names: Names) -> Plan:
    if seen.merge is None:
        return _finish(plan, st)  # (re)created by this pass: see the children above
    failed = job_condition(seen.merge, "Failed")
    if failed:
        message = _failure_message(seen.merge_pods, f"merge Job {names.merge} failed: {failed.get('reason', '')}")
        return _fail(plan, st, "MergeFailed", message)
    if job_condition(seen.merge, "Complete"):
        st.data["mergedPath"] = volume_path(spec.storage.output, "merged")
        return _succeed(plan, st, "adapter trained and merged")
    return _finish(plan, st)


def _succeed(plan: Plan, st: _Status, message: str) -> Plan:
    st.condition("Succeeded", "True", "Succeeded", message)
    st.phase("Succeeded", "Succeeded", message)
    st.data["completionTime"] = iso(st.now)
    return _finish(plan, st)


def _fail(plan: Plan, st: _Status, reason: str, message: str) -> Plan:
    st.condition("Running", "False", reason, "")
    st.condition("Failed", "True", reason, message)
    st.phase("Failed", reason, message, warning=True)
    st.data["completionTime"] = iso(st.now)
    return _finish(plan, st)


def _expire(plan: Plan, st: _Status, spec: FinetuneJobSpec, seen: Observed, names: Names) -> Plan:
    """ttlSecondsAfterFinished: remove the children of a finished job, keep the FinetuneJob and its status."""
    ttl = spec.run_policy.ttl_seconds_after_finished
    finished = parse_time(st.data.get("completionTime"))
    if ttl is None or finished is None:
        return _finish(plan, st, done=True)
    if st.now - finished < timedelta(seconds=ttl):
        return _finish(plan, st)  # keep watching until it expires
    present = [
        ("ConfigMap", names.config) if seen.has_config else None,
        ("Service", names.service) if seen.has_service else None,
        ("Job", names.workers) if seen.workers is not None else None,
        ("Job", names.merge) if seen.merge is not None else None,
    ]
    plan.delete = [p for p in present if p]
    if plan.delete:
        st.events.append(Event("Normal", "TTLExpired", f"deleted {len(plan.delete)} child object(s)"))
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
            st.events.append(Event("Normal", "WorkerRestarted", f"worker {index} restarted as {pod}"))
        recorded[index] = names[-1]
    st.data["restarts"] = restarts
    if recorded:
        st.data["workerPods"] = dict(sorted(recorded.items(), key=lambda kv: int(kv[0])))


def _summary(pods: tuple[PodView, ...]) -> dict[str, Any] | None:
    for pod in sorted(pods, key=lambda p: p.created, reverse=True):
        if pod.index == 0 and pod.phase == "Succeeded":
            record = parse_termination(pod.termination_message)
            if record and record.get("event") == "summary":
                return record
    return None


def _apply_summary(st: _Status, summary: dict[str, Any]) -> None:
    progress = dict(st.data.get("progress") or {})
    progress.update(
        {
            "step": summary.get("steps"),
            "totalSteps": summary.get("steps"),
            "loss": summary.get("final_loss"),
            "epoch": summary.get("epochs"),
            "tokensPerSecond": summary.get("tokens_per_second"),
            "etaSeconds": 0,
        }
    )
    st.data["progress"] = progress
    st.data["progressSummary"] = f"{summary.get('steps')}/{summary.get('steps')}"


def _trained_message(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("first_loss") is None or summary.get("final_loss") is None:
        return "training succeeded"
    return f"trained {summary.get('steps')} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}"


def _finish(plan: Plan, st: _Status, done: bool = False) -> Plan:
    plan.status = st.data
    plan.events = st.events
    plan.done = done
    return plan


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from old to new status (removed keys become null); empty when nothing changed."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
