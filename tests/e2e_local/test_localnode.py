"""The local node's own rules (tests/support/kubelet.py, tests/support/jobcontroller.py), without the operator.

The flows in test_flow.py trust the node to behave as a kubelet and a Job controller do; these tests hold it to
the Kubernetes docs each module cites: disruptions (DisruptionTarget, SIGTERM, SIGKILL after the grace period)
and podFailurePolicy's rules, with real containers (or processes) where the rule is about one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import engine
import pytest
from jobcontroller import new_pod, rule_action
from kube import Cluster, eventually
from kubelet import container_env, exit_code, termination_message
from localnode import LocalNode, available, dump, mode

from kubetune.api.contract import ENV_JOB_COMPLETION_INDEX, PERMANENT_EXIT_CODES, ExitCode

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))

DISRUPTION_RULE = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
# Ignores SIGTERM (a trainer stuck in a collective, say): only the SIGKILL after the grace period stops it.
STUBBORN = "trap '' TERM; echo ready; while :; do sleep 0.2; done"


def job(name: str, script: str, grace: int, rules: list[dict[str, Any]], backoff_limit: int = 0) -> dict[str, Any]:
    container = {"name": "trainer", "image": engine.TRAINER_IMAGE, "command": ["sh", "-c", script], "workingDir": "/"}
    pod = {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace, "containers": [container]}
    spec = {"completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": backoff_limit}
    if rules:
        spec["podFailurePolicy"] = {"rules": rules}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {**spec, "template": {"metadata": {"labels": {"app": name}}, "spec": pod}},
    }


async def ready_pod(node: LocalNode, name: str) -> str:
    async def probe() -> str | None:
        pods = [c.pod for c in node.containers.values() if c.job == name and c.exit_code is None]
        return next((p for p in pods if "ready" in node.cluster.logs.get(p, "")), None)

    return await eventually(probe, timeout=120, what=f"a running pod of {name}")


async def test_an_evicted_pod_that_ignores_sigterm_is_killed_after_its_grace_period_and_not_counted(
    cluster: Cluster, tmp_path: Path
):
    grace = 3
    async with LocalNode(cluster, {}, tmp_path / "node") as node:
        await cluster.create(job("stubborn", STUBBORN, grace, [DISRUPTION_RULE]))
        first = await ready_pod(node, "stubborn")
        started = time.monotonic()
        await node.evict(first, reason="TerminationByKubelet")  # node-pressure eviction, the pod's grace period
        waited = time.monotonic() - started
        pod = await eventually(lambda: _failed(cluster, first), what="the evicted pod Failed")
        second = await ready_pod(node, "stubborn")  # the Job controller replaced it
        status = (await cluster.get("Job", "stubborn"))["status"]
    assert node.exits("stubborn")[0] == 137, dump(node)  # SIGKILL: 128 + 9
    assert waited >= grace, waited  # SIGTERM was ignored: the kill came only after the grace period
    (disruption,) = [c for c in pod["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert disruption["status"] == "True" and disruption["reason"] == "TerminationByKubelet"
    assert second != first and status.get("failed", 0) == 0, status  # the Ignore rule: backoffLimit 0 unspent
    assert not [c for c in status.get("conditions", []) if c["type"] == "Failed"], status


async def test_an_evicted_pod_counts_against_backoff_limit_without_the_disruption_rule(
    cluster: Cluster, tmp_path: Path
):
    async with LocalNode(cluster, {}, tmp_path / "node") as node:
        await cluster.create(job("counted", STUBBORN, 30, []))
        pod = await ready_pod(node, "counted")
        await node.evict(pod, reason="EvictionByEvictionAPI", grace=0)  # a delete's gracePeriodSeconds: 0

        async def failed() -> dict[str, Any] | None:
            status = (await cluster.get("Job", "counted"))["status"]
            return next((c for c in status.get("conditions", []) if c["type"] == "Failed"), None)

        condition = await eventually(failed, timeout=60, what="the Job Failed")
    assert condition["reason"] == "BackoffLimitExceeded", condition
    assert node.exits("counted") == [137] and await cluster.get("Pod", pod) is None, dump(node)  # the API deleted it


async def test_a_pod_whose_image_is_not_on_the_node_stays_pending_active_and_is_not_replaced(
    cluster: Cluster, tmp_path: Path
):
    if mode() != "container":
        pytest.skip("process mode runs the entrypoint, not an image")
    manifest = job("noimage", "true", 1, [])
    manifest["spec"]["template"]["spec"]["containers"][0]["image"] = "localhost/kubetune/none:0"
    await cluster.create(manifest)
    node = LocalNode(cluster, {}, tmp_path / "node")  # not entered: each sync is one look, no background loop
    for _ in range(3):
        await node.sync()
    pods = await cluster.list("Pod")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]  # the Job controller counts it active: no second
    (state,) = [s["state"] for s in pods[0]["status"]["containerStatuses"]]
    assert pods[0]["status"]["phase"] == "Pending" and state["waiting"]["reason"] == "ImagePullBackOff"
    assert (await cluster.get("Job", "noimage"))["status"]["active"] == 1
    await node.kubelet.close()


async def _failed(cluster: Cluster, pod: str) -> dict[str, Any] | None:
    obj = await cluster.get("Pod", pod)
    return obj if (obj or {}).get("status", {}).get("phase") == "Failed" else None


def test_pod_failure_policy_rules_are_tried_in_order_and_the_first_match_decides():
    permanent = sorted(int(c) for c in PERMANENT_EXIT_CODES)
    rules = [
        DISRUPTION_RULE,
        {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [75]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": permanent}},
        {"action": "Count", "onExitCodes": {"containerName": "trainer", "operator": "NotIn", "values": [1]}},
    ]
    spec = {"spec": {"podFailurePolicy": {"rules": rules}}}
    disrupted = [{"type": "DisruptionTarget", "status": "True"}]
    config = int(ExitCode.CONFIG)
    assert rule_action(spec, 137, disrupted) == "Ignore"
    assert rule_action(spec, config, disrupted) == "Ignore"  # the condition rule comes first
    assert rule_action(spec, config) == "FailJob"
    assert rule_action(spec, 75) == "Ignore"
    assert rule_action(spec, 137, [{"type": "DisruptionTarget", "status": "False"}]) == "Count"  # NotIn [1]
    assert rule_action(spec, 1) is None  # no rule: the failure counts
    assert rule_action({"spec": {}}, 137, disrupted) is None


def test_an_indexed_pod_gets_its_index_from_the_annotation_through_the_kubelet():
    manifest = job("indexed", "true", 1, [])
    manifest["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    pod = new_pod(manifest, 0)
    assert container_env(pod, pod["spec"]["containers"][0])[ENV_JOB_COMPLETION_INDEX] == "0"
    assert "env" not in manifest["spec"]["template"]["spec"]["containers"][0]  # the template is left alone


def test_the_kubelets_exit_codes_and_termination_messages():
    assert exit_code(-9) == 137 and exit_code(-15) == 143 and exit_code(3) == 3
    log = "x" * 5000
    assert termination_message("", log, 1, "FallbackToLogsOnError") == log[-2048:]
    assert termination_message("", log, 0, "FallbackToLogsOnError") == ""  # only a failed container's log
    assert termination_message("", log, 1, "File") == ""
    assert termination_message("m" * 5000, log, 1, "FallbackToLogsOnError") == "m" * 4096
