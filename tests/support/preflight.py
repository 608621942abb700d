"""The initializer Job's part, played by hand against kmock: every FinetuneJob's first Job is the preflight
(`kubetune plan --preflight`), and no worker Job exists before it completed."""

from __future__ import annotations

from typing import Any

from kube import Cluster, condition, eventually, job_pod_metadata, job_status, terminated

from kubetune.operator.render import Names


async def initialized(api: Cluster, name: str = "quotes", message: str = "") -> dict[str, Any]:
    """Wait for the initializer Job, then finish it as the Job controller and kubelet would: one Succeeded pod
    whose termination message is `message` (a PlanEvent line; empty: an image that reports no plan)."""
    init = Names.of(name).initializer
    job = await eventually(lambda: api.get("Job", init), what="initializer Job")
    metadata = await job_pod_metadata(api, init, f"{init}-x")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**metadata, "creationTimestamp": "2026-11-22T09:00:00Z"}}
    await api.create({**pod, "status": terminated("Succeeded", 0, message)["status"]})
    await job_status(api, init, succeeded=1, conditions=condition("Complete"))
    return job


async def worker_job(api: Cluster, name: str = "quotes", message: str = "", what: str = "worker Job") -> dict:
    """The worker Job, once the initializer finished."""
    await initialized(api, name, message)
    return await eventually(lambda: api.get("Job", Names.of(name).workers), what=what)
