"""The operator against what a real API server, Kueue and the garbage collector do (issue 11): the emulator
refuses bad names (422) and what RBAC forbids (403), suspends queued Jobs like Kueue's webhook, and collects
the children of deleted owners. Each test fails on an operator that ignores that behaviour."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import replace
from typing import Any

import pytest
from kube import (
    NAMES,
    RBAC,
    Cluster,
    chart_rbac,
    condition,
    events_seen,
    eventually,
    finetunejob,
    job_status,
    operator,
    phase_is,
    pod,
)
from preflight import worker_job

from kubetune.operator import k8s
from kubetune.operator.observed import CONTROLLER_UID_LABEL, INDEX_LABEL
from kubetune.operator.render import Names


async def warning_events(api: Cluster, reason: str) -> list[dict[str, Any]]:
    return [e for e in await api.list("Event") if e.get("reason") == reason and e.get("type") == "Warning"]


def without(rbac: RBAC, resource: str, verb: str) -> RBAC:
    return RBAC([replace(r, verbs=r.verbs - {verb}) if resource in r.resources else r for r in rbac.rules])


async def test_the_charts_rbac_is_enough_for_the_whole_flow(cluster: Cluster):
    cluster.kmock.rbac = chart_rbac()
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await pod(cluster, 0, "Running")
        await job_status(cluster, NAMES.workers, active=1)
        await phase_is(cluster, "Running")


async def test_block_owner_deletion_needs_the_finalizers_right(cluster: Cluster):
    # OwnerReferencesPermissionEnforcement: without update on finetunejobs/finalizers every create is refused.
    cluster.kmock.rbac = without(chart_rbac(), "finetunejobs/finalizers", "update")
    async with operator():
        await cluster.create(finetunejob())
        obj = await eventually(lambda: _condition(cluster, "Created", "Forbidden"), what="Created=False/Forbidden")
    assert "finetunejobs/finalizers" in obj["message"] and await cluster.get("ConfigMap", NAMES.config) is None


async def _condition(api: Cluster, type_: str, reason: str, name: str = "quotes") -> dict[str, Any] | None:
    obj = await api.get("FinetuneJob", name)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_ and c["reason"] == reason), None)


async def test_a_forbidden_create_is_reported_then_retried_once_allowed(cluster: Cluster):
    rbac = chart_rbac()
    cluster.kmock.rbac = without(rbac, "jobs", "create")
    async with operator():
        await cluster.create(finetunejob())
        cond = await eventually(lambda: _condition(cluster, "Created", "Forbidden"), what="Created=False/Forbidden")
        assert 'cannot create resource "jobs" in API group "batch"' in cond["message"]
        await events_seen(cluster, "Forbidden", type_="Warning")
        await asyncio.sleep(1.0)  # five polls of the operator (0.2 s) with the create still refused
        assert len(await warning_events(cluster, "Forbidden")) == 1  # once, not every poll
        cluster.kmock.rbac = rbac  # the admin fixes the Role
        await worker_job(cluster, what="worker Job once allowed")
        await phase_is(cluster, "Pending")


async def test_an_invalid_child_fails_the_job_with_the_servers_message(cluster: Cluster):
    # A queue name that is not a valid label value: the API server answers 422 to the first Job, the initializer.
    async with operator():
        await cluster.create(finetunejob(scheduling={"queueName": "team a!"}))
        failed = await phase_is(cluster, "Failed")
        await events_seen(cluster, "Invalid", type_="Warning")
    assert failed["status"]["message"].startswith(f"creating Job {NAMES.initializer} was refused (422): Job ")
    assert "'team a!'" in failed["status"]["message"]


async def test_a_strangers_configmap_is_never_adopted(cluster: Cluster):
    await cluster.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAMES.config},
            "data": {"config.yaml": "someone else's"},
        }
    )
    async with operator():
        await cluster.create(finetunejob())
        failed = await phase_is(cluster, "Failed")
    assert failed["status"]["message"] == f"ConfigMap {NAMES.config} exists and is not owned by this FinetuneJob"
    assert (await cluster.get("ConfigMap", NAMES.config))["data"]["config.yaml"] == "someone else's"


async def test_a_name_at_the_limit_gets_children_the_server_accepts(cluster: Cluster):
    name = "q" * 63  # the longest name the CRD admits
    names = Names.of(name)
    async with operator():
        await cluster.create(finetunejob(name=name))
        job = await worker_job(cluster, name=name)
        await phase_is(cluster, "Pending", name=name)
    assert await cluster.get("Service", names.service) and await cluster.get("ConfigMap", names.config)
    assert job["spec"]["template"]["metadata"]["labels"]["kubetune.dev/finetunejob"] == name


async def test_kueue_owns_the_suspension_of_a_queued_job(cluster: Cluster):
    cluster.kmock.kueue = True
    async with operator():
        await cluster.create(finetunejob(scheduling={"queueName": "team-a"}))
        job = await worker_job(cluster)
        patches = cluster.requests("patch", "Job")  # the test's own (the initializer's status) before this
        assert job["spec"]["suspend"] is True
        queued = await eventually(lambda: _message(cluster, "Kueue"), what="Queued")
        assert "team-a" in queued
        await phase_is(cluster, "Pending")
        await eventually(lambda: _reconciled_since(cluster, 5), what="a few more polls")
        assert (await cluster.get("Job", NAMES.workers))["spec"]["suspend"] is True  # quota not bypassed
        assert cluster.requests("patch", "Job") == patches  # the operator patched no Job
        await cluster.patch("Job", NAMES.workers, {"spec": {"suspend": False}})  # Kueue admits it
        await pod(cluster, 0, "Running")
        await job_status(cluster, NAMES.workers, active=1)
        await phase_is(cluster, "Running")


async def _message(api: Cluster, part: str) -> str | None:
    obj = await api.get("FinetuneJob", "quotes")
    message = ((obj or {}).get("status") or {}).get("message") or ""
    return message if part in message else None


async def _reconciled_since(api: Cluster, polls: int) -> bool:
    if not hasattr(api, "_mark"):
        api._mark = api.requests("get", "FinetuneJob")  # type: ignore[attr-defined]
    return api.requests("get", "FinetuneJob") - api._mark >= polls  # type: ignore[attr-defined]


async def test_no_finalizer_so_deletion_never_waits_for_the_operator(cluster: Cluster):
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await phase_is(cluster, "Pending")
    obj = await cluster.get("FinetuneJob", "quotes")
    assert not obj["metadata"].get("finalizers")
    # The operator is gone (helm uninstall keeps the CRD): deleting still completes, children are collected.
    assert await cluster.delete("FinetuneJob", "quotes")
    assert await cluster.get("FinetuneJob", "quotes") is None
    await eventually(lambda: _gone(cluster, "Job", NAMES.workers), what="the worker Job garbage-collected")


async def _gone(api: Cluster, kind: str, name: str) -> bool:
    return await api.get(kind, name) is None


async def test_delete_and_reapply_waits_for_the_old_children(cluster: Cluster):
    cluster.kmock.gc_delay = 1.0
    async with operator():
        await cluster.create(finetunejob())
        old = await worker_job(cluster)
        await cluster.delete("FinetuneJob", "quotes")
        new = await cluster.create(finetunejob())  # at once: the old Jobs are still there

        def new_job(name: str) -> Any:
            async def probe() -> dict[str, Any] | None:
                job = await cluster.get("Job", name)
                owner = ((job or {}).get("metadata") or {}).get("ownerReferences") or [{}]
                return job if owner[0].get("uid") == new["metadata"]["uid"] else None

            return probe

        await eventually(new_job(NAMES.initializer), what="the new run's initializer Job")
        await job_status(cluster, NAMES.initializer, succeeded=1, conditions=condition("Complete"))
        await eventually(new_job(NAMES.workers), what="the new run's worker Job")
        await phase_is(cluster, "Pending")
    assert old["metadata"]["uid"] != (await cluster.get("Job", NAMES.workers))["metadata"]["uid"]
    assert not await warning_events(cluster, "NameConflict")


async def test_a_pass_in_flight_across_a_delete_and_reapply_writes_nothing_onto_the_new_job(
    cluster: Cluster, monkeypatch
):
    """A user applies a broken FinetuneJob, deletes it and applies the fixed one while the operator's pass on the
    broken one is still running. That pass's verdict (Failed: InvalidSpec) must not land on the new object, which
    runs its own preflight and workers."""
    # The order is forced: the broken job's first pass reads it and waits; the user deletes it and applies the
    # fixed one; the waiting pass then goes on and writes its status; only then does the fixed job's pass read.
    held, release, reported = threading.Event(), threading.Event(), threading.Event()
    get, observe, patch_status = k8s.Cluster.get_finetunejob, k8s.Cluster.observe, k8s.Cluster.patch_status

    def read_after_the_held_pass_reported(self: k8s.Cluster, *args: Any) -> Any:
        if held.is_set() and not reported.is_set():
            reported.wait(10)
        return get(self, *args)

    def first_pass_waits(self: k8s.Cluster, *args: Any) -> Any:
        if not held.is_set():
            held.set()
            release.wait(10)
        return observe(self, *args)

    def report(self: k8s.Cluster, *args: Any) -> Any:
        try:
            return patch_status(self, *args)
        finally:
            reported.set()

    monkeypatch.setattr(k8s.Cluster, "get_finetunejob", read_after_the_held_pass_reported)
    monkeypatch.setattr(k8s.Cluster, "patch_status", report)
    monkeypatch.setattr(k8s.Cluster, "observe", first_pass_waits)
    async with operator():
        await cluster.create(finetunejob(nodes=0))
        assert await asyncio.to_thread(held.wait, 10), "the operator never started a pass"
        await cluster.delete("FinetuneJob", "quotes")
        fixed = await cluster.create(finetunejob())
        release.set()
        workers = await worker_job(cluster, what="the fixed job's worker Job")
        await phase_is(cluster, "Pending")
    status = (await cluster.get("FinetuneJob", "quotes"))["status"]
    assert workers["metadata"]["ownerReferences"][0]["uid"] == fixed["metadata"]["uid"]
    assert "InvalidSpec" not in {c.get("reason") for c in status.get("conditions") or []}, status


@pytest.mark.parametrize("namespaced", [True])
async def test_namespaced_mode_makes_no_cluster_scoped_calls(cluster: Cluster, monkeypatch, namespaced):
    cluster.kmock.rbac = chart_rbac({"watch": {"namespaced": namespaced, "namespaces": ["ml"]}})
    monkeypatch.setenv("KUBETUNE_WATCH_NAMESPACES", "ml")
    async with operator("--standalone", env={"KUBETUNE_WATCH_NAMESPACES": "ml"}):
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        await phase_is(cluster, "Merging")
    seen = cluster.kmock.served
    cluster_scoped = [str(r.url) for r in seen if r.resource is not None and r.resource.plural and r.namespace is None]
    assert cluster_scoped == []


async def test_a_finalizer_left_by_an_older_operator_is_removed(cluster: Cluster):
    old = finetunejob()
    old["metadata"]["finalizers"] = ["kubetune.dev/finalizer"]
    async with operator():
        await cluster.create(old)
        await worker_job(cluster)

        async def released() -> bool:
            obj = await cluster.get("FinetuneJob", "quotes")
            return not obj["metadata"].get("finalizers")

        await eventually(released, what="the old finalizer removed")


async def test_the_charts_rbac_and_a_name_at_the_limit_suffice_for_the_initializer(cluster: Cluster):
    """Remote sources: the initializer Job (a child like the others) is created under the chart's Role, with a
    name and labels the server accepts, and nothing else is created while it runs."""
    cluster.kmock.rbac = chart_rbac()
    name = "q" * 63
    ftj = finetunejob(name, sources={"cache": {"claimName": "cache"}, "s3CredentialsSecret": "s3"})
    ftj["spec"]["storage"] = {"output": {"claimName": "runs"}}
    ftj["spec"]["training"] = {"model": {"path": "s3://models/smollm2"}, "data": {"path": ["hf://datasets/o/q"]}}
    async with operator():
        await cluster.create(ftj)
        init = await eventually(lambda: cluster.get("Job", Names.of(name).initializer), what="initializer Job")
        await phase_is(cluster, "Initializing", name=name)
        await job_status(cluster, Names.of(name).initializer, succeeded=1, conditions=condition("Complete"))
        await eventually(lambda: cluster.get("Job", Names.of(name).workers), what="worker Job")
    assert len(init["metadata"]["name"]) <= 63 and init["metadata"]["labels"]["kubetune.dev/finetunejob"] == name
    assert await warning_events(cluster, "Forbidden") == []


def foreign_pod(name: str, phase: str, message: str, **meta: Any) -> dict[str, Any]:
    """A pod that carries the FinetuneJob's labels without being its current Job's: a deleted run's, or forged."""
    labels = {"kubetune.dev/finetunejob": "quotes", "kubetune.dev/role": "worker", INDEX_LABEL: "0"}
    state = {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1, "message": message}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {**labels, **meta.pop("labels", {})}, **meta},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


async def test_a_deleted_runs_terminating_pods_are_not_this_runs(cluster: Cluster):
    # Delete and re-apply: the old run's pod (its Job's uid; Terminating, or orphaned by a Job deleted without
    # Background propagation) must not count as a restart or a failure of the new run.
    old = foreign_pod(
        f"{NAMES.workers}-0-old",
        "Failed",
        '{"event": "error", "exit_code": 3, "message": "old run: bad record"}',
        labels={CONTROLLER_UID_LABEL: "uid-of-the-deleted-runs-job"},
        creationTimestamp="2026-11-22T09:00:00Z",  # (kmock hides objects created with a deletionTimestamp)
    )
    await cluster.create(old)
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await pod(cluster, 0, "Running")
        running = await phase_is(cluster, "Running")
    assert running["status"]["restarts"] == 0 and running["status"]["workerPods"] == {"0": f"{NAMES.workers}-0-a"}
    assert not [e for e in await cluster.list("Event") if e.get("reason") == "WorkerRestarted"]


async def test_a_forged_pod_does_not_change_another_jobs_result(cluster: Cluster):
    # Anyone who may create pods in the namespace can copy a FinetuneJob's labels (issue 29: pods trusted by label).
    real = {"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5, "pushed_to": "s3://results/quotes"}
    forged = {**real, "pushed_to": "s3://attacker/loot", "final_loss": 0.01}
    async with operator():
        await cluster.create(finetunejob(merge={"enabled": False}))
        await worker_job(cluster)
        await pod(cluster, 0, "Succeeded", exit_code=0, message=json.dumps(real))
        await cluster.create(
            foreign_pod(
                f"{NAMES.workers}-0-zzz", "Succeeded", json.dumps(forged), creationTimestamp="2026-11-22T11:00:00Z"
            )
        )
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        done = await phase_is(cluster, "Succeeded")
    assert done["status"]["resultLocation"] == "s3://results/quotes" and done["status"]["progress"]["loss"] == 0.5


async def test_pods_the_job_controller_cannot_create_are_reported(cluster: Cluster):
    # A ResourceQuota refuses the worker pod: only a FailedCreate Event on the Job says so, and the chart's RBAC
    # must let the operator read it.
    from kube import failed_create

    cluster.kmock.rbac = chart_rbac()
    quota = 'pods "quotes-workers-0-x" is forbidden: exceeded quota: team-a, requested: cpu=4, limited: cpu=2'
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await failed_create(cluster, NAMES.workers, quota)

        async def reported() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", "quotes")
            return obj if "exceeded quota" in ((obj or {}).get("status") or {}).get("message", "") else None

        obj = await eventually(reported, what="the FailedCreate message in status")

        async def warned() -> list[dict[str, Any]]:
            return [
                e
                for e in await warning_events(cluster, "FailedCreate")
                if e["involvedObject"].get("kind") == "FinetuneJob"
            ]

        await eventually(warned, what="a Warning Event on the FinetuneJob")
    assert obj["status"]["phase"] == "Pending"
    running = next(c for c in obj["status"]["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", "FailedCreate") and quota in running["message"]


async def test_with_network_policies_on_each_run_gets_one_before_its_pods(cluster: Cluster, monkeypatch):
    cluster.kmock.rbac = chart_rbac({"networkPolicy": {"enabled": True}})
    monkeypatch.setenv("KUBETUNE_NETWORK_POLICY", "true")
    async with operator(env={"KUBETUNE_NETWORK_POLICY": "true"}):
        await cluster.create(finetunejob())
        await worker_job(cluster)
        policy = await eventually(lambda: cluster.get("NetworkPolicy", NAMES.network_policy), what="NetworkPolicy")
    ftj = await cluster.get("FinetuneJob", "quotes")
    run = {"matchLabels": {"kubetune.dev/run": ftj["metadata"]["uid"]}}
    assert (
        policy["spec"]["podSelector"] == run
        and policy["metadata"]["ownerReferences"][0]["uid"] == ftj["metadata"]["uid"]
    )
    assert cluster.requests("post", "NetworkPolicy") == 1  # once, not at every poll


def test_the_emulated_rbac_grants_only_what_is_bound_to_the_operator():
    # kubernetes.io/docs/reference/access-authn-authz/rbac: a Role grants nothing until bound to the subject.
    role = {
        "kind": "Role",
        "metadata": {"name": "jobs", "namespace": "ml"},
        "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}],
    }

    def binding(namespace: str, account: str) -> dict[str, Any]:
        subject = {"kind": "ServiceAccount", "name": account, "namespace": "kubetune-system"}
        return {
            "kind": "RoleBinding",
            "metadata": {"name": "b", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobs"},
            "subjects": [subject],
        }

    assert not RBAC.from_manifests([role]).allows("create", "batch", "jobs", "ml")
    assert not RBAC.from_manifests([role, binding("ml", "someone-else")]).allows("create", "batch", "jobs", "ml")
    bound = RBAC.from_manifests([role, binding("ml", "kubetune")])
    assert bound.allows("create", "batch", "jobs", "ml") and not bound.allows("create", "batch", "jobs", "other")
    assert chart_rbac().allows("create", "batch", "jobs", "any-namespace")  # the chart binds its ClusterRole


@pytest.mark.parametrize(("policy", "collected"), [(None, False), ("Orphan", False), ("Background", True)])
async def test_a_jobs_pods_are_collected_only_when_its_delete_says_so(cluster: Cluster, policy, collected):
    """The emulator's rule: batch/v1 Jobs orphan their pods unless the delete asks for Background or Foreground."""
    owner = await cluster.create({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}})
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": owner["metadata"]["uid"], "controller": True}
    await cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-0", "ownerReferences": [ref]}})
    assert await cluster.delete("Job", "j", propagation=policy)
    if collected:
        await eventually(lambda: _gone(cluster, "Pod", "j-0"), what="the pod collected with its Job")
    else:
        await asyncio.sleep(0.2)  # give a (wrong) background collection the time it would take
        left = await cluster.get("Pod", "j-0")
        assert left is not None and not left["metadata"].get("ownerReferences")


async def test_a_write_naming_a_stale_resource_version_is_refused(cluster: Cluster):
    """The emulator's rule (optimistic concurrency), which the operator's status writes (k8s.patch_status) rely on."""
    first = (await cluster.create(finetunejob()))["metadata"]["resourceVersion"]
    await cluster.patch("FinetuneJob", "quotes", {"metadata": {"labels": {"a": "b"}}})
    second = (await cluster.get("FinetuneJob", "quotes"))["metadata"]["resourceVersion"]
    assert second != first

    async def patch_status(version: str) -> int:
        body = {"metadata": {"resourceVersion": version}, "status": {"phase": "Running"}}
        headers = {"Content-Type": "application/merge-patch+json"}
        path = cluster.path("FinetuneJob", "quotes", sub="status")
        async with cluster.session.patch(path, data=json.dumps(body), headers=headers) as r:
            return r.status

    assert await patch_status(first) == 409
    assert (await cluster.get("FinetuneJob", "quotes")).get("status") is None
    assert await patch_status(second) == 200
    await cluster.delete("FinetuneJob", "quotes")
    again = (await cluster.create(finetunejob()))["metadata"]["resourceVersion"]
    assert again not in (first, second)


async def test_status_changes_only_through_its_subresource(cluster: Cluster):
    """The emulator's rule, which the operator's status writes (k8s.patch_status) must follow."""
    await cluster.create(finetunejob())
    await cluster.patch("FinetuneJob", "quotes", {"status": {"phase": "Succeeded"}, "metadata": {"labels": {"a": "b"}}})
    obj = await cluster.get("FinetuneJob", "quotes")
    assert (obj.get("status") or {}).get("phase") is None and obj["metadata"]["labels"]["a"] == "b"
    await cluster.patch("FinetuneJob", "quotes", {"status": {"phase": "Running"}, "spec": {"nodes": 3}}, sub="status")
    obj = await cluster.get("FinetuneJob", "quotes")
    assert obj["status"]["phase"] == "Running" and obj["spec"].get("nodes") != 3


async def test_a_served_request_is_counted_but_not_kept_where_every_match_rescans(cluster: Cluster):
    """kmock re-filters its whole request history for every reaction at every request; the emulator keeps only
    in-flight requests there (`served` keeps the rest), so a flow's 10^4 polls cost no more than its first."""
    await cluster.create(finetunejob())
    for _ in range(30):
        await cluster.get("FinetuneJob", "quotes")
    cluster.logs["p"] = "a line\n"
    async with cluster.session.get(cluster.path("Pod", "p", sub="log")) as r:
        assert r.status == 200 and await r.text() == "a line\n"  # a reaction registered on a view still serves
    assert list(cluster.kmock) == []
    assert cluster.requests("get", "FinetuneJob") == 30 and cluster.requests("post", "FinetuneJob") == 1
