"""The operator's only door to the Kubernetes API (the official `kubernetes` client).

Thin and blocking: handlers call it through `asyncio.to_thread`. Objects travel
as plain dicts in the API's own camelCase (`_preload_content=False`), the same
shape the renderers produce and `decide` reads, so nothing converts between
client models and manifests. It fills the observation types (observed.py) and
never imports the decision.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api.finetunejob import GROUP, PLURAL, VERSION
from kubetune.operator.observed import (
    CONTROLLER_UID_LABEL,
    Observed,
    PodView,
    failed_creates,
    job_condition,
    made_by,
    ownership,
    short_of_pods,
)
from kubetune.operator.render import CONTAINER, Names

log = logging.getLogger("kubetune.operator")
LOG_TAIL_LINES = 40


def configure() -> None:
    """In a pod: its service account; elsewhere: the current kubeconfig context."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # $KUBECONFIG read now, not when the client was imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)


def _data(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def _missing(exc: ApiException) -> bool:
    return exc.status == 404


def server_message(exc: ApiException) -> str:
    """The API server's own words (its Status object's message), else the HTTP reason."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or exc.status)


class Cluster:
    def __init__(self, api: client.ApiClient | None = None):
        self.api = api or client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.networking = client.NetworkingV1Api(self.api)

    def _call(self, verb: str, kind: str) -> Any:
        """The client method for `verb` on `kind`, e.g. ("read", "Job") -> BatchV1Api.read_namespaced_job."""
        api, noun = {
            "ConfigMap": (self.core, "config_map"),
            "Service": (self.core, "service"),
            "Job": (self.batch, "job"),
            "NetworkPolicy": (self.networking, "network_policy"),
        }[kind]
        return getattr(api, f"{verb}_namespaced_{noun}")

    # --- reading --------------------------------------------------------------------------------------

    def get_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _data(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if _missing(exc):
                return None
            raise

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _data(self._call("read", kind)(name, namespace, _preload_content=False))
        except ApiException as exc:
            if _missing(exc):
                return None
            raise

    def _pods(self, namespace: str, job: dict[str, Any] | None) -> tuple[PodView, ...]:
        """The pods the Job controller made for this Job: selected by the Job's uid (CONTROLLER_UID_LABEL), not
        by the FinetuneJob's labels, which a deleted run's Terminating pods and anyone's pod can carry."""
        uid = ((job or {}).get("metadata") or {}).get("uid")
        if not uid:
            return ()
        selector = f"{CONTROLLER_UID_LABEL}={uid}"
        items = _data(self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False))
        # Checked again, with the owner too: the selector is the server's job, but emulators skip it.
        return tuple(PodView.of(p) for p in items.get("items", []) if made_by(p, job or {}))

    def pod_log_tail(self, namespace: str, pod: str) -> str | None:
        try:
            return self.core.read_namespaced_pod_log(
                pod, namespace, container=CONTAINER, tail_lines=LOG_TAIL_LINES, _preload_content=False
            ).data.decode("utf-8", "replace")
        except ApiException as exc:
            # 400/404: not started yet, or gone. 5xx: the kubelet behind the API server cannot answer (a node
            # NotReady): progress is best effort and must never hold up the rest of the reconcile.
            if exc.status in (400, 404) or (exc.status or 0) >= 500:
                if (exc.status or 0) >= 500:
                    log.warning("reading the log of pod %s/%s failed: %s %s", namespace, pod, exc.status, exc.reason)
                return None
            raise

    def observe(self, meta: dict[str, Any], now: Any, network_policy: bool = False) -> Observed:
        ns, name = meta["namespace"], meta["name"]
        names = Names.of(name)
        workers = self._read("Job", ns, names.workers)
        merge = self._read("Job", ns, names.merge)
        initializer = self._read("Job", ns, names.initializer)  # fetch and plan, before any worker
        worker_pods = self._pods(ns, workers)
        merge_pods = self._pods(ns, merge)
        # Its pods until the workers exist: why one waits (an image it cannot pull), then its last words (the
        # trainer's error, or the plan). Not read again once the workers exist (the plan is in status by then).
        initializer_pods = self._pods(ns, initializer) if workers is None else ()
        # Once training is over its summary is in the termination message: no more log reads while merging/TTL.
        training_over = job_condition(workers, "Complete") or job_condition(workers, "Failed")
        rank0 = sorted(
            (p for p in worker_pods if p.index == 0 and p.phase in ("Running", "Succeeded", "Failed")),
            key=lambda p: p.created,
        )
        short = [j for j, pods in ((workers, worker_pods), (merge, merge_pods)) if short_of_pods(j, pods)]
        if initializer is not None and not job_condition(initializer, "Failed"):
            short += [initializer] if short_of_pods(initializer, self._pods(ns, initializer)) else []
        config, service = self._read("ConfigMap", ns, names.config), self._read("Service", ns, names.service)
        policy = self._read("NetworkPolicy", ns, names.network_policy) if network_policy else None
        not_ours = [
            (ownership(o, meta), kind, o["metadata"]["name"])
            for kind, o in (("ConfigMap", config), ("Service", service), ("NetworkPolicy", policy))
            if o is not None
        ]
        return Observed(
            now=now,
            has_config=config is not None,
            has_service=service is not None,
            has_network_policy=policy is not None,
            not_ours=tuple(n for n in not_ours if n[0] != "ours"),
            workers=workers,
            merge=merge,
            initializer=initializer,
            worker_pods=worker_pods,
            merge_pods=merge_pods,
            initializer_pods=initializer_pods,
            rank0_log=self.pod_log_tail(ns, rank0[-1].name) if rank0 and not training_over else None,
            create_failures=failed_creates(self._job_events(ns, short), short) if short else (),
        )

    def _job_events(self, namespace: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The Events about these Jobs (the Job controller's FailedCreate among them)."""
        events: list[dict[str, Any]] = []
        for job in jobs:
            selector = f"involvedObject.kind=Job,involvedObject.name={job['metadata']['name']},reason=FailedCreate"
            found = self.core.list_namespaced_event(namespace, field_selector=selector, _preload_content=False)
            events += _data(found).get("items", [])
        return events

    # --- writing --------------------------------------------------------------------------------------

    def create(self, manifest: dict[str, Any], owner: dict[str, Any]) -> str:
        """Create a child of `owner` (its metadata). On 409 the existing object is looked at, never taken blindly:
        "created", "adopted" (ours: a restart or a lost response), "previous" (a deleted FinetuneJob of the same
        name, awaiting garbage collection) or "foreign" (someone else's). Other refusals raise ApiException."""
        ns, kind, name = manifest["metadata"]["namespace"], manifest["kind"], manifest["metadata"]["name"]
        try:
            self._call("create", kind)(ns, manifest, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = self._read(kind, ns, name)
            found = "previous" if existing is None else ownership(existing, owner)  # gone meanwhile: next poll
            return "adopted" if found == "ours" else found
        return "created"

    def delete(self, namespace: str, kind: str, name: str) -> bool:
        """Delete with background propagation: pods get SIGTERM and their grace period."""
        try:
            self._call("delete", kind)(name, namespace, propagation_policy="Background", _preload_content=False)
        except ApiException as exc:
            if _missing(exc):
                return False
            raise
        return True

    def patch_job(self, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """A merge patch of a Job's mutable spec fields (suspend, backoffLimit, activeDeadlineSeconds)."""
        self.batch.patch_namespaced_job(name, namespace, {"spec": spec}, _preload_content=False)

    def patch_status(self, read: dict[str, Any], new: dict[str, Any]) -> bool:
        """Write the status of the FinetuneJob as `read` through its subresource, as a merge patch from the status
        read; False when nothing changed. The patch carries the resourceVersion read, so the API server answers 409
        when the object changed since, or was deleted and re-created under the same name, instead of writing one
        object's decisions onto another. (Not the uid: on /status the server keeps the stored metadata and checks
        only the resourceVersion, k8s.io/apiserver registry Store.Update.)"""
        meta = read["metadata"]
        patch = status_patch(read.get("status") or {}, new)
        if patch:
            body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch}
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body, _preload_content=False
            )
        return bool(patch)


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from old to new status (removed keys become null); empty when nothing changed."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch
