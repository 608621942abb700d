"""The Job controller of the local node: batch/v1 Jobs into pods and back into Job status, from the Kubernetes docs.

Each rule names the page it encodes (kubernetes.io/docs/...):

- Pods (concepts/workloads/controllers/job/#completion-mode; reference/labels-annotations-taints): one pod per
  index of an Indexed Job, named `<job>-<index>-<random>`, labelled with the template's labels, the Job's name
  and uid (batch.kubernetes.io/job-name, batch.kubernetes.io/controller-uid and their legacy forms) and the index
  (batch.kubernetes.io/job-completion-index, label and annotation), owned by the Job as its controller, and
  given the index as JOB_COMPLETION_INDEX (a fieldRef on that annotation, which the kubelet resolves).
- Completion: an Indexed Job is Complete when every index has a succeeded pod (completedIndexes); a failed
  index gets a new pod.
- Failures (concepts/workloads/controllers/job/#pod-failure-policy): podFailurePolicy's rules are tried in
  order and the first that matches a failed pod decides: onExitCodes (In / NotIn, the trainer container) or
  onPodConditions (DisruptionTarget, status True); Ignore does not count the failure, FailJob fails the Job at
  once (reason PodFailurePolicy), Count (and no match) counts it; the Job fails with BackoffLimitExceeded once
  more pods failed than backoffLimit. A failed Job's remaining pods are terminated.
- Suspension (concepts/workloads/controllers/job/#suspending-a-job): a suspended Job's active pods are deleted
  (SIGTERM, their grace period), its status says active 0 and carries the Suspended condition; resumed, it
  makes pods again for the indexes not yet succeeded.

What it does not do: the backoff delay between retries, a Job's own activeDeadlineSeconds (the operator enforces
the deadline), podReplacementPolicy (a replacement starts once the old pod's container has exited), and
FailedCreate Events (tests/support/kube.py's `failed_create` plays a refused pod create).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kubelet import Container, Kubelet, now

from kubetune.api.contract import ENV_JOB_COMPLETION_INDEX
from kubetune.operator.observed import CONTROLLER_UID_LABEL, INDEX_LABEL
from kubetune.operator.render import CONTAINER as CONTAINER_NAME

if TYPE_CHECKING:
    from kube import Cluster

DEFAULT_BACKOFF_LIMIT = 6  # batch/v1 JobSpec.backoffLimit's default


@dataclass
class JobState:
    failed: int = 0
    fail_job: str | None = None  # the message of a matching FailJob rule
    succeeded: set[int] = field(default_factory=set)
    finished: bool = False
    started: str | None = None


def pod_metadata(job: dict[str, Any], name: str, index: int | None) -> dict[str, Any]:
    """The metadata of a pod the Job controller makes for `job`: the template's labels, the Job's, the index."""
    meta = job["metadata"]
    template = ((job["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    labels = {
        **template,
        **{"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]},
        **{CONTROLLER_UID_LABEL: meta["uid"], "controller-uid": meta["uid"]},
    }
    if index is not None:
        labels[INDEX_LABEL] = str(index)
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": meta["uid"], "controller": True}
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": labels,
        "annotations": {INDEX_LABEL: str(index)} if index is not None else {},
        "ownerReferences": [owner],
    }


def new_pod(job: dict[str, Any], index: int | None) -> dict[str, Any]:
    """The pod for one index (None: a non-indexed Job's pod), JOB_COMPLETION_INDEX included."""
    suffix = uuid.uuid4().hex[:5]
    job_name = job["metadata"]["name"]
    name = f"{job_name}-{index}-{suffix}" if index is not None else f"{job_name}-{suffix}"
    spec = copy.deepcopy(job["spec"]["template"]["spec"])
    if index is not None:
        ref = {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_LABEL}']"}}
        for container in spec["containers"]:
            container["env"] = [*container.get("env", []), {"name": ENV_JOB_COMPLETION_INDEX, "valueFrom": ref}]
    metadata = {**pod_metadata(job, name, index), "creationTimestamp": now()}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": "Pending"}}


def _matches(rule: dict[str, Any], exit_code: int | None, conditions: list[dict[str, str]]) -> bool:
    codes = rule.get("onExitCodes")
    if codes:
        if codes.get("containerName", CONTAINER_NAME) != CONTAINER_NAME or exit_code in (None, 0):
            return False
        inside = exit_code in codes["values"]
        return inside if codes.get("operator") == "In" else not inside
    wanted = rule.get("onPodConditions") or []
    return any(
        c["type"] == w["type"] and c.get("status") == w.get("status", "True") for w in wanted for c in conditions
    )


def rule_action(job: dict[str, Any], exit_code: int | None, conditions: Sequence[dict[str, str]] = ()) -> str | None:
    """podFailurePolicy: the action of the first rule matching a failed pod (its exit code, its conditions), as
    the controller evaluates them in order; None when no rule matches (the failure counts)."""
    for rule in ((job["spec"].get("podFailurePolicy") or {}).get("rules")) or []:
        if _matches(rule, exit_code, list(conditions)):
            return rule.get("action")
    return None


def condition(type_: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}


class JobController:
    def __init__(self, cluster: Cluster, kubelet: Kubelet):
        self.cluster = cluster
        self.kubelet = kubelet  # the one node: every pod runs there
        self.jobs: dict[str, JobState] = {}  # by the Job's uid
        self.pending: dict[str, tuple[str, int]] = {}  # pods the kubelet left Pending: name -> (Job uid, index)

    def _active(self, uid: str) -> list[Container]:
        return [c for c in self.kubelet.containers.values() if c.job_uid == uid and c.exit_code is None]

    def _pending(self, uid: str, pods: set[str]) -> dict[str, int]:
        """The Job's pods that exist but never started (ImagePullBackOff): active, as Job.status.active counts them."""
        for name in [n for n in self.pending if n not in pods]:
            del self.pending[name]
        return {name: index for name, (owner, index) in self.pending.items() if owner == uid}

    async def sync(self, job: dict[str, Any], pods: set[str]) -> None:
        meta, spec = job["metadata"], job["spec"]
        state = self.jobs.setdefault(meta["uid"], JobState())
        if state.finished or state.fail_job is not None or state.failed > _backoff_limit(job):
            return  # finished, or failing: `finished` is writing the Failed condition; no replacement pod
        active, pending = self._active(meta["uid"]), self._pending(meta["uid"], pods)
        conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] != "Suspended"]
        if spec.get("suspend"):
            await self._suspend(job, active, list(pending), conditions)
            return
        completions = int(spec.get("completions") or 1)
        indexed = spec.get("completionMode") == "Indexed"
        # A non-indexed Job's single pod counts as index 0; a Pending pod holds its index (no second pod for it).
        running = {c.index or 0 for c in active} | set(pending.values())
        for index in range(completions):
            if index in state.succeeded or index in running:
                continue
            pod = new_pod(job, index if indexed else None)
            await self.cluster.create(pod)
            if not await self.kubelet.run(pod, job, self):
                self.pending[pod["metadata"]["name"]] = (meta["uid"], index or 0)
        state.started = state.started or now()
        waiting = [name for name, (owner, _) in self.pending.items() if owner == meta["uid"]]
        active_count = len(self._active(meta["uid"])) + len(waiting)
        status = {"active": active_count, "startTime": state.started, "conditions": conditions}
        await self._status(meta["name"], status, job)

    async def _suspend(
        self, job: dict[str, Any], active: list[Container], pending: list[str], conditions: list[dict]
    ) -> None:
        current = job.get("status") or {}
        already = any(c["type"] == "Suspended" for c in current.get("conditions") or [])
        if already and not active and not pending and current.get("active") == 0:
            return
        for name in pending:
            del self.pending[name]
            await self.cluster.delete("Pod", name)
        for c in active:
            if not c.deleted:
                c.deleted = True
                await self.cluster.delete("Pod", c.pod)
                self.kubelet.spawn(self.kubelet.terminate(c, c.grace))
        status = {"active": 0, "conditions": [*conditions, condition("Suspended", "JobSuspended")]}
        await self._status(job["metadata"]["name"], status, job)

    async def _status(self, name: str, status: dict[str, Any], job: dict[str, Any]) -> None:
        current = job.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            await self.cluster.patch("Job", name, {"status": status}, sub="status")

    def count(self, c: Container, job: dict[str, Any]) -> None:
        """Account for an exit before anything else can look (no await): no index runs twice."""
        state = self.jobs[c.job_uid]
        if c.exit_code == 0:
            state.succeeded.add(c.index or 0)
            return
        action = rule_action(job, c.exit_code, c.conditions)
        if action != "Ignore":
            state.failed += 1
        if action == "FailJob" and state.fail_job is None:
            state.fail_job = (
                f"Container {CONTAINER_NAME} for pod {c.pod} failed with exit code {c.exit_code} matching FailJob rule"
            )

    async def finished(self, c: Container, job: dict[str, Any]) -> None:
        """A pod ended: the Job's counts, and Complete or Failed when that decides it."""
        state = self.jobs[c.job_uid]
        if state.finished:
            return
        job = await self.cluster.get("Job", c.job) or job
        completions = int(job["spec"].get("completions") or 1)
        conditions = list((job.get("status") or {}).get("conditions") or [])
        status: dict[str, Any] = {
            "succeeded": len(state.succeeded),
            "failed": state.failed,
            "completedIndexes": ",".join(str(i) for i in sorted(state.succeeded)),
        }
        if len(state.succeeded) == completions:
            state.finished = True
            status |= {"active": 0, "completionTime": now(), "conditions": [*conditions, condition("Complete", "")]}
        elif state.fail_job or state.failed > _backoff_limit(job):
            state.finished = True
            # The Job controller's reasons: a FailJob rule wins over counting (podFailurePolicy docs).
            reason = "PodFailurePolicy" if state.fail_job else "BackoffLimitExceeded"
            message = state.fail_job or "Job has reached the specified backoff limit"
            status |= {"active": 0, "conditions": [*conditions, condition("Failed", reason, message)]}
            for other in self._active(c.job_uid):
                self.kubelet.spawn(self.kubelet.terminate(other, other.grace))
        await self.cluster.patch("Job", c.job, {"status": status}, sub="status")


def _backoff_limit(job: dict[str, Any]) -> int:
    return int(job["spec"].get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
