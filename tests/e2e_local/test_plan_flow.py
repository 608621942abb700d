"""The preflight on a local node: the initializer Job runs the real `kubetune plan --preflight` on the run's
config and data, and the operator acts on its PlanEvent before any worker exists.

An oversized FinetuneJob (a memory limit far below what SmolLM2-135M needs) fails with no worker pod and the
numbers in status; an unsized one gets requests and limits from its plan, and trains. tests/support/localnode.py
says what the node emulates (it does not enforce resource limits: the pod's resources are checked as rendered).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from kube import Cluster, eventually, operator
from localnode import LocalNode, available, dump

from kubetune.api import backends, quantity
from kubetune.operator.initializer import HEADROOM
from kubetune.operator.render import Names

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(available() is not None, reason=str(available())),
]


def finetunejob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FinetuneJob",
        "metadata": {"name": name},
        "spec": {
            "storage": {
                "model": {"claimName": "models"},
                "data": {"claimName": "data"},
                "output": {"claimName": "runs", "subPath": name},
            },
            "training": {
                "data": {"path": ["train.jsonl"], "max_length": 64},
                "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                "training": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, "precision": "fp32"},
            },
            "merge": {"enabled": False},
            **spec,
        },
    }


async def final(cluster: Cluster, node: LocalNode, name: str, timeout: float = 600) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status = ((await cluster.get("FinetuneJob", name)) or {}).get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    try:
        return await eventually(probe, timeout=timeout, what=f"{name} finished")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{dump(node)}") from None


async def test_an_oversized_finetunejob_fails_with_no_worker_pod_and_the_numbers_in_status(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path
):
    name, names = "too-big", Names.of("too-big")
    async with LocalNode(cluster, claims, tmp_path / "node") as node, operator():
        await cluster.create(finetunejob(name, resources={"limits": {"memory": "300Mi"}}))
        status = await final(cluster, node, name, timeout=420)
    assert status["phase"] == "Failed", f"{status}\n{dump(node)}"
    assert [h["job"] for h in node.history] == [names.initializer], dump(node)  # no worker pod, ever
    assert node.exits(names.initializer) == [0]  # the plan is made; the operator refuses the run
    assert await cluster.get("Job", names.workers) is None
    condition = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "InsufficientMemory", condition
    plan = status["plan"]
    assert condition["message"].startswith(f"needs {plan['peak']} per worker, spec.resources.limits.memory is 300Mi")
    assert plan["peakBytesPerWorker"] > 300 * 2**20 and plan["tokens"] > 0 and plan["steps"] == 2
    assert status["message"] == condition["message"]


async def test_an_unsized_finetunejob_gets_its_memory_from_its_plan_and_trains(
    cluster: Cluster, claims: dict[str, Path], tmp_path: Path
):
    name, names = "sized", Names.of("sized")
    async with LocalNode(cluster, claims, tmp_path / "node") as node, operator():
        await cluster.create(finetunejob(name))
        status = await final(cluster, node, name)
        workers = await cluster.get("Job", names.workers)
    assert status["phase"] == "Succeeded", f"{status.get('message')}\n{dump(node)}"
    assert [h["job"] for h in node.history] == [names.initializer, names.workers], dump(node)
    plan = status["plan"]
    # Request: the plan's peak; limit: HEADROOM over it, the backend's default limit at least.
    peak, default = plan["peakBytesPerWorker"], quantity.parse(backends.get("cpu").limits["memory"])
    limit = f"{math.ceil(max(peak * HEADROOM, float(default)) / 2**20)}Mi"
    assert plan["memory"] == limit and plan["steps"] == 2 and plan["tokens"] > 0
    resources = workers["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == f"{math.ceil(peak / 2**20)}Mi", resources
    assert resources["limits"]["memory"] == limit, resources
    initialized = next(c for c in status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("True", "Planned")
    assert (claims["runs"] / name / "adapter" / "adapter_model.safetensors").is_file()
