"""The API door (k8s.Cluster) through the real kubernetes client's request path, against the emulated server.

The pinned client (37) validates every request body with pydantic before sending it: a manifest the
renderers produce must pass that too, not only the API server's rules. Every example FinetuneJob is sent.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from kube import NAMESPACE, Cluster
from kubernetes import config

from kubetune.api.finetunejob import FinetuneJobSpec
from kubetune.operator import k8s
from kubetune.operator.initializer import render_initializer_job
from kubetune.operator.render import (
    render_configmap,
    render_merge_job,
    render_service,
    render_worker_job,
)
from kubetune.operator.settings import PodSettings

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "k8s").glob("finetunejob-*.yaml"))


def children(ftj: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(owner metadata, every child the operator may create for this FinetuneJob)."""
    meta = {"name": ftj["metadata"]["name"], "namespace": NAMESPACE, "uid": "0000-owner"}
    spec = FinetuneJobSpec.model_validate(ftj["spec"])
    settings = PodSettings()
    made = [
        render_configmap(meta, spec),
        render_service(meta),
        render_worker_job(meta, spec, settings),
        render_merge_job(meta, spec, settings),
    ]
    if spec.sources:
        made.append(render_initializer_job(meta, spec, settings))
    return meta, made


def real_client() -> k8s.Cluster:
    return k8s.Cluster(config.new_client_from_config(config_file=os.environ["KUBECONFIG"]))


def quantities(job: dict[str, Any]) -> list[Any]:
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    return [v for part in resources.values() for v in part.values()]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def test_every_example_is_created_through_the_real_client(cluster: Cluster, example: Path):
    assert len(EXAMPLES) >= 5  # cpu, cpu-ccl, cuda, xpu, remote
    meta, manifests = children(yaml.safe_load(example.read_text()))
    door = real_client()
    for manifest in manifests:
        assert await asyncio.to_thread(door.create, manifest, meta) == "created"
    for manifest in manifests:
        stored = await cluster.get(manifest["kind"], manifest["metadata"]["name"])
        assert stored is not None, manifest["metadata"]["name"]
        if manifest["kind"] == "Job":
            assert quantities(stored) and all(isinstance(q, str) for q in quantities(stored))


async def test_a_users_integer_quantities_reach_the_server_as_strings(cluster: Cluster):
    ftj = yaml.safe_load((EXAMPLES[0].parent / "finetunejob-cpu.yaml").read_text())
    ftj["spec"]["resources"] = {"requests": {"cpu": 2, "memory": "4Gi"}, "limits": {"cpu": 3}}
    meta, manifests = children(ftj)
    workers = next(
        m for m in manifests if m["kind"] == "Job" and m["metadata"]["labels"]["kubetune.dev/role"] == "worker"
    )
    assert await asyncio.to_thread(real_client().create, workers, meta) == "created"
    stored = await cluster.get("Job", workers["metadata"]["name"])
    resources = stored["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "3"}}
