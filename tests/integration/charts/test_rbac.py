"""The chart's RBAC against a real run of the operator (issue 29, point 5): the operator is started with the
command line and environment of the chart's own Deployment, against the emulated API server, whose RBAC is the
chart's rendered Roles and bindings (tests/support/rbac.py records every request it authorizes). What the chart
grants must be exactly what the run needed, and in namespaced mode nothing outside the listed namespaces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
from kube import (
    NAMES,
    OPERATOR_TOKEN,
    VERBS,
    Cluster,
    chart_objects,
    condition,
    eventually,
    failed_create,
    finetunejob,
    job_pod_metadata,
    job_status,
    operator,
    phase_is,
    pod,
    terminated,
)
from rbac import RBAC

CHART = Path(__file__).resolve().parents[3] / "charts" / "kubetune"
FAST = {"KUBETUNE_POLL_SECONDS": "0.2", "KUBETUNE_METRICS_PORT": "0"}  # test speed; no port bound


def deployment_command(docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The operator container's arguments and literal environment, as the chart renders them (no liveness
    server: tests run side by side on one host)."""
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith("--liveness")]
    env = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
    return args, {**env, **FAST}


@pytest.fixture
def chart_operator(cluster: Cluster, monkeypatch: pytest.MonkeyPatch):
    """Install the chart's RBAC on the emulator and return a starter of the operator as its Deployment runs it."""

    # A real API server serves CRDs; kopf waits for them to be discoverable before it watches them.
    cluster.kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=VERBS, subresources={"status"}
    )

    def install(values: dict[str, Any]) -> tuple[RBAC, Any]:
        docs = chart_objects(values)
        rbac = RBAC.from_manifests(docs)
        cluster.kmock.rbac = rbac
        args, env = deployment_command(docs)
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # the operator's startup reads os.environ
        return rbac, lambda: operator(*args, env=env)

    return install


def needed(rbac: RBAC) -> set[tuple[str, str, str]]:
    return {(verb, group, resource) for verb, group, resource, _ in rbac.used}


@pytest.mark.parametrize(
    ("watch", "scopes"),
    [({"namespaces": ["ml"]}, {"ml"}), ({"namespaced": False}, {"ml", None})],
    ids=["namespaced", "all-namespaces"],
)
async def test_the_chart_grants_exactly_what_a_whole_run_uses(
    cluster: Cluster, chart_operator, watch: dict[str, Any], scopes: set[str | None]
):
    """Create (ConfigMap, Service, NetworkPolicy, Jobs), a runPolicy edit patched onto the Job, a pod the Job
    controller could not create (its Events listed), progress from the rank-0 log, success, then the TTL
    deleting every child: every verb the chart grants is used, and every one used is granted. Namespaced mode
    makes no cluster-scoped request (scope None); all-namespaces mode watches cluster-wide."""
    rbac, start = chart_operator({"watch": watch, "networkPolicy": {"enabled": True}})
    quota = 'pods "quotes-workers-0-x" is forbidden: exceeded quota: team-a, requested: cpu=4, limited: cpu=2'
    async with start():
        await cluster.create(finetunejob(merge={"enabled": False}, runPolicy={"ttlSecondsAfterFinished": 0}))
        await eventually(lambda: cluster.get("NetworkPolicy", NAMES.network_policy), what="NetworkPolicy")
        await worker_job(cluster)
        await cluster.patch("Job", NAMES.workers, {"spec": {"backoffLimit": 42}})  # the operator puts it back

        async def restored() -> bool:
            job = await cluster.get("Job", NAMES.workers)
            return job is not None and job["spec"].get("backoffLimit") != 42

        await eventually(restored, what="the runPolicy's backoffLimit patched back onto the Job")
        await failed_create(cluster, NAMES.workers, quota)

        async def reported() -> bool:
            obj = await cluster.get("FinetuneJob", "quotes")
            return "exceeded quota" in ((obj or {}).get("status") or {}).get("message", "")

        await eventually(reported, what="the FailedCreate Event read into status")
        name = await pod(cluster, 0, "Running")
        cluster.logs[name] = json.dumps({"event": "progress", "step": 2, "total_steps": 5, "loss": 1.25}) + "\n"
        await job_status(cluster, NAMES.workers, active=1)

        async def progressed() -> bool:
            obj = await cluster.get("FinetuneJob", "quotes")
            return (((obj or {}).get("status") or {}).get("progress") or {}).get("step") == 2

        await eventually(progressed, what="progress from the rank-0 log")
        summary = json.dumps({"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5})
        await cluster.patch(
            "Pod",
            name,
            {"status": {"phase": "Succeeded", "containerStatuses": [_terminated(summary)]}},
            sub="status",
        )
        await job_status(cluster, NAMES.workers, succeeded=1, active=0, conditions=condition("Complete"))
        await phase_is(cluster, "Succeeded")

        async def children_gone() -> bool:
            kinds = ("Job", NAMES.workers), ("ConfigMap", NAMES.config), ("Service", NAMES.service)
            return all([await cluster.get(k, n) is None for k, n in (*kinds, ("NetworkPolicy", NAMES.network_policy))])

        await eventually(children_gone, what="every child deleted by the TTL")
    assert rbac.refused == []
    assert {ns for *_, ns in rbac.used} == scopes
    assert rbac.granted() - needed(rbac) == set(), "granted but never used"
    assert needed(rbac) - rbac.granted() == set()


def _terminated(message: str) -> dict[str, Any]:
    return {"name": "trainer", "state": {"terminated": {"exitCode": 0, "message": message}}}


@pytest.mark.parametrize(
    ("watch", "kind", "path"),
    [
        ({"namespaces": ["ml"]}, "KopfPeering", "/apis/kopf.dev/v1/namespaces/ml/kopfpeerings"),
        ({"namespaced": False}, "ClusterKopfPeering", "/apis/kopf.dev/v1/clusterkopfpeerings"),
    ],
    ids=["namespaced", "all-namespaces"],
)
async def test_replicas_get_exactly_the_peering_verbs_kopf_uses(
    cluster: Cluster, chart_operator, watch: dict[str, Any], kind: str, path: str
):
    """replicaCount > 1: kopf peering through the chart's peering object (one per served namespace, or one
    cluster-wide): the rights on it are the ones kopf used, and the replica acts."""
    values = {"watch": watch, "replicaCount": 2}
    (peering,) = [d for d in chart_objects(values) if d["kind"] == kind]
    await _admin_create(cluster, path, peering)
    rbac, start = chart_operator(values)
    async with start():
        await cluster.create(finetunejob())
        await worker_job(cluster)  # the replica acts

        async def kept_alive() -> bool:
            async with cluster.session.get(f"{path}/kubetune") as r:
                return bool((await r.json()).get("status"))

        await eventually(kept_alive, what=f"the replica's keep-alive in the {kind}")
    assert rbac.refused == []
    resource = path.rsplit("/", 1)[-1]
    peerings = {g for g in rbac.granted() if g[2] == resource}
    assert peerings and peerings == {n for n in needed(rbac) if n[2] == resource}


async def _admin_create(cluster: Cluster, path: str, body: dict[str, Any]) -> None:
    async with cluster.session.post(path, json=body) as r:
        assert r.status < 300, await r.text()


@pytest.fixture
async def as_operator(cluster: Cluster) -> AsyncIterator[aiohttp.ClientSession]:
    """Requests authenticated as the operator's service account (the emulator applies RBAC to them)."""
    headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    async with aiohttp.ClientSession(base_url=str(cluster.kmock.url), headers=headers) as session:
        yield session


async def test_serving_team_a_the_operator_can_write_there_and_not_in_kube_system(
    cluster: Cluster, chart_operator, as_operator: aiohttp.ClientSession
):
    rbac, start = chart_operator({"watch": {"namespaces": ["team-a"]}})
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {}}
    for namespace, allowed in (("kube-system", False), ("team-a", True)):
        body = {**job, "metadata": {"name": f"probe-{namespace}"}}
        async with as_operator.post(f"/apis/batch/v1/namespaces/{namespace}/jobs", json=body) as r:
            assert (r.status < 300) if allowed else (r.status == 403), (namespace, r.status, await r.text())
    rbac.used.clear()
    rbac.refused.clear()
    await cluster.create(in_namespace(finetunejob(), "kube-system"))
    async with start():
        await cluster.create(in_namespace(finetunejob(), "team-a"))
        await eventually(lambda: cluster.get("ConfigMap", NAMES.config, ns="team-a"), what="team-a's first child")
        await phase_is_in(cluster, "team-a", "Initializing", "Pending")
    assert rbac.refused == []  # it never even tried kube-system
    assert {ns for *_, ns in rbac.used} == {"team-a"}
    served_elsewhere = await cluster.get("FinetuneJob", "quotes", ns="kube-system")
    assert not served_elsewhere.get("status") and await cluster.get("ConfigMap", NAMES.config, ns="kube-system") is None


def in_namespace(ftj: dict[str, Any], namespace: str) -> dict[str, Any]:
    ftj["metadata"]["namespace"] = namespace
    return ftj


async def phase_is_in(api: Cluster, namespace: str, *phases: str) -> None:
    async def probe() -> bool:
        obj = await api.get("FinetuneJob", "quotes", ns=namespace)
        return bool(obj) and (obj.get("status") or {}).get("phase") in phases

    await eventually(probe, what=f"phase {phases} in {namespace}")


async def worker_job(api: Cluster) -> dict[str, Any]:
    """The worker Job, after playing the initializer Job's part (Job controller and kubelet) where the operator
    starts one first: a Succeeded pod, then the Job Complete."""

    async def first() -> dict[str, Any] | None:
        return await api.get("Job", NAMES.workers) or await api.get("Job", NAMES.initializer)

    job = await eventually(first, what="the worker or initializer Job")
    if job["metadata"]["name"] == NAMES.initializer:
        metadata = await job_pod_metadata(api, NAMES.initializer, f"{NAMES.initializer}-x")
        await api.create({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, **terminated("Succeeded", 0, "")})
        await job_status(api, NAMES.initializer, succeeded=1, conditions=condition("Complete"))
    return await eventually(lambda: api.get("Job", NAMES.workers), what="worker Job")
