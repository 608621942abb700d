"""What the operator saw of one FinetuneJob's world: the types `k8s.Cluster.observe` fills and `decide` reads.

Its own module so that the API door (k8s.py) and the decision (decide.py) both import it and neither
imports the other. Pure: plain dicts in (the API's camelCase), frozen views out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubetune.api.finetunejob import KIND
from kubetune.operator.render import CONTAINER

# The Job controller's label (and annotation) on an Indexed Job's pods (kubernetes.io/docs/concepts/workloads/
# controllers/job/#completion-mode); tests/support reads the same constant.
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# The Job controller labels every pod it creates with its Job's uid (and makes the Job its controller owner):
# what tells this run's pods from a deleted run's Terminating ones, and from a pod someone made by hand with the
# FinetuneJob's labels. Whoever may create pods and read the Job can still copy both: docs/install-policy.md.
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


def made_by(pod: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether the Job controller made this pod for this Job: its uid label and its controller ownerReference."""
    uid = (job.get("metadata") or {}).get("uid")
    meta = pod.get("metadata") or {}
    owner = owner_of(pod) or {}
    return bool(uid) and (meta.get("labels") or {}).get(CONTROLLER_UID_LABEL) == uid and owner.get("uid") == uid


@dataclass(frozen=True)
class PodView:
    """The parts of a pod the decision needs."""

    name: str
    index: int | None
    phase: str  # Pending | Running | Succeeded | Failed
    created: str = ""
    exit_code: int | None = None
    termination_message: str | None = None
    # Why a Pending pod does not run: the kubelet's waiting reason (ImagePullBackOff, CreateContainerConfigError,
    # ...) or the scheduler's (Unschedulable), with its message.
    waiting: tuple[str, str] | None = None

    @staticmethod
    def of(pod: dict[str, Any]) -> PodView:
        meta, status = pod.get("metadata", {}), pod.get("status", {}) or {}
        index = (meta.get("labels") or {}).get(INDEX_LABEL) or (meta.get("annotations") or {}).get(INDEX_LABEL)
        exit_code = message = None
        waiting = _unscheduled(status)
        for cs in status.get("containerStatuses") or []:
            if cs.get("name") == CONTAINER:
                state = cs.get("state") or {}
                if state.get("terminated"):
                    exit_code, message = state["terminated"].get("exitCode"), state["terminated"].get("message")
                if (state.get("waiting") or {}).get("reason"):
                    waiting = (state["waiting"]["reason"], state["waiting"].get("message") or "")
        return PodView(
            name=meta.get("name", ""),
            index=int(index) if index not in (None, "") else None,
            phase=status.get("phase") or "Pending",
            created=meta.get("creationTimestamp") or "",
            exit_code=exit_code,
            termination_message=message,
            waiting=waiting,
        )


def _unscheduled(status: dict[str, Any]) -> tuple[str, str] | None:
    """The scheduler's PodScheduled=False condition (reason Unschedulable, message: which nodes and why)."""
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return (c.get("reason") or "Unschedulable", c.get("message") or "")
    return None


@dataclass(frozen=True)
class Refusal:
    """The API server refused to create a child (an ApiException's status and the server's own words)."""

    kind: str
    name: str
    code: int
    message: str


@dataclass(frozen=True)
class Observed:
    now: datetime
    has_config: bool = False
    has_service: bool = False
    has_network_policy: bool = False
    workers: dict[str, Any] | None = None  # the worker Job as the API returns it
    merge: dict[str, Any] | None = None
    initializer: dict[str, Any] | None = None  # the `kubetune fetch` Job of a spec with remote sources
    worker_pods: tuple[PodView, ...] = ()
    merge_pods: tuple[PodView, ...] = ()
    initializer_pods: tuple[PodView, ...] = ()
    rank0_log: str | None = None  # the tail of the newest rank-0 pod's log
    # (ownership, kind, name) of an object under a child's name that is not ours: seen, or met by a create
    not_ours: tuple[tuple[str, str, str], ...] = ()
    refused: Refusal | None = None  # this pass's create was refused: decide reports it
    # The Job controller's FailedCreate Events on a current Job short of pods: (Job name, the server's words).
    create_failures: tuple[tuple[str, str], ...] = ()


def iso(t: datetime) -> str:
    """A time as the API server writes it (RFC 3339, seconds, UTC)."""
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def job_condition(job: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    """A Job's condition of this type when it is True, else None."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def owner_of(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The controller (or first) ownerReference of an object."""
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return next((r for r in refs if r.get("controller")), refs[0] if refs else None)


def ownership(obj: dict[str, Any], meta: dict[str, Any]) -> str:
    """ours | previous (a deleted FinetuneJob of the same name, awaiting garbage collection) | foreign."""
    uid = meta.get("uid", "")
    if any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or []):
        return "ours"
    ref = owner_of(obj) or {}
    same_name = ref.get("kind") == KIND and ref.get("name") == meta["name"]
    if same_name or obj.get("metadata", {}).get("deletionTimestamp"):
        return "previous"
    return "foreign"


def short_of_pods(job: dict[str, Any] | None, pods: tuple[PodView, ...]) -> bool:
    """A Job still running that has fewer live pods than it asks for: the Job controller may be refused."""
    if job is None or job_condition(job, "Complete") or job_condition(job, "Failed"):
        return False
    if (job.get("spec") or {}).get("suspend"):
        return False
    wanted = int((job.get("spec") or {}).get("parallelism") or 1)
    return sum(1 for p in pods if p.phase in ("Pending", "Running")) < wanted


def failed_creates(events: list[dict[str, Any]], jobs: list[dict[str, Any]]) -> tuple[tuple[str, str], ...]:
    """The newest FailedCreate Event of each of these Jobs (matched by uid: a deleted run's do not count)."""
    uids = {(j.get("metadata") or {}).get("uid"): j["metadata"]["name"] for j in jobs}
    newest: dict[str, tuple[str, str]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        if event.get("reason") != "FailedCreate" or involved.get("uid") not in uids:
            continue
        when = event.get("lastTimestamp") or event.get("eventTime") or ""
        name = uids[involved["uid"]]
        if name not in newest or when >= newest[name][0]:
            newest[name] = (when, event.get("message") or "")
    return tuple((name, message) for name, (_, message) in sorted(newest.items()))
