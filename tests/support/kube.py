"""The Kubernetes API for tests: kmock's emulator with our resources registered, a kubeconfig
pointing at it, a small aiohttp client, and the operator started with kopf's KopfRunner.

kmock stores and streams objects; it runs no controllers, assigns no uid or resourceVersion,
ignores label selectors, serves no pod logs and ignores generateName. Emulator fills the create-time
gaps (pyproject's `kmock_cls` makes it the `kmock` fixture's class) and the pod log endpoint answers
from `Cluster.logs` (which tests or the local node fill in).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
from kopf.testing import KopfRunner

from kubetune.operator.main import command

VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
RESOURCES = {
    "kubetune.dev/v1alpha1/finetunejobs": ("FinetuneJob", {"status"}),
    "batch/v1/jobs": ("Job", {"status"}),
    "v1/pods": ("Pod", {"status", "log"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/services": ("Service", set()),
    "v1/events": ("Event", set()),
    "v1/namespaces": ("Namespace", set()),  # kopf waits to discover it, even when watching all namespaces
}
PATHS = {
    "FinetuneJob": "/apis/kubetune.dev/v1alpha1/namespaces/{ns}/finetunejobs",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Event": "/api/v1/namespaces/{ns}/events",
}
NAMESPACE = "ml"


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server fills in on create: generateName (kopf's events), uid
    (ownerReferences), creationTimestamp and a resourceVersion (kopf's JSON patches test it)."""

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return await super()._handle(request)


class Cluster:
    """A tiny async client of the emulated API server, plus the pod logs it serves."""

    def __init__(self, session: aiohttp.ClientSession, kmock: Any):
        self.session = session
        self.kmock = kmock
        self.logs: dict[str, str] = {}  # pod name -> log text, served at pods/{name}/log

    @staticmethod
    def path(kind: str, name: str | None = None, ns: str = NAMESPACE, sub: str | None = None) -> str:
        return PATHS[kind].format(ns=ns) + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", NAMESPACE)
        async with self.session.post(self.path(body["kind"], ns=meta["namespace"]), json=body) as r:
            assert r.status < 300, await r.text()
            return await r.json()

    async def get(self, kind: str, name: str, ns: str = NAMESPACE) -> dict[str, Any] | None:
        async with self.session.get(self.path(kind, name, ns)) as r:
            return await r.json() if r.status == 200 else None

    async def list(self, kind: str, ns: str = NAMESPACE, **labels: str) -> list[dict[str, Any]]:
        async with self.session.get(self.path(kind, ns=ns)) as r:
            items = (await r.json()).get("items", [])
        return [i for i in items if all((i["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())]

    async def patch(self, kind: str, name: str, body: dict[str, Any], sub: str | None = None,
                    ns: str = NAMESPACE) -> None:  # fmt: skip
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(self.path(kind, name, ns, sub), data=json.dumps(body), headers=headers) as r:
            assert r.status < 300, await r.text()

    async def delete(self, kind: str, name: str, ns: str = NAMESPACE) -> bool:
        async with self.session.delete(self.path(kind, name, ns)) as r:
            return r.status < 300

    def requests(self, method: str, kind: str) -> int:
        """How many requests of this method reached this resource's collection or objects."""
        prefix = PATHS[kind].split("{ns}")[-1]
        return sum(1 for r in self.kmock[method.lower()] if prefix in str(r.url.path))


async def eventually(probe: Callable[[], Awaitable[Any]], timeout: float = 15, what: str = "") -> Any:
    """Await `probe()` until it returns something truthy; fail naming `what` and the last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    value = None
    while asyncio.get_running_loop().time() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}: last value {value!r}")


@pytest.fixture
async def cluster(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    for resource, (kind, subresources) in RESOURCES.items():
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=kind != "Namespace", verbs=VERBS, subresources=subresources
        )
    async with aiohttp.ClientSession(base_url=str(kmock.url)) as session:
        api = Cluster(session, kmock)
        kmock["get", kmock.resource("v1/pods"), kmock.subresource("log")] << (
            lambda request: api.logs.get(request.name, "").encode()
        )
        kubeconfig = tmp_path / "kubeconfig"
        server = str(kmock.url).rstrip("/")
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                    "users": [{"name": "test", "user": {}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
                    "current-context": "kmock",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("KUBETUNE_POLL_SECONDS", "0.2")
        monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
        yield api


@contextlib.contextmanager
def operator() -> Iterator[KopfRunner]:
    """The real operator (kubetune-operator's own command line) in a background thread."""
    with KopfRunner(command(["--standalone"], {}), timeout=30) as runner:
        yield runner
    assert runner.exception is None, runner.exception
