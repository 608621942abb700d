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
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import kmock
import pytest
from apirules import Refused, object_problems
from kopf.testing import KopfRunner
from rbac import RBAC

from kubetune.operator.main import command
from kubetune.operator.observed import CONTROLLER_UID_LABEL, INDEX_LABEL
from kubetune.operator.render import Names

VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
RESOURCES = {
    "kubetune.dev/v1alpha1/finetunejobs": ("FinetuneJob", {"status"}),
    "batch/v1/jobs": ("Job", {"status"}),
    "v1/pods": ("Pod", {"status", "log"}),
    "v1/configmaps": ("ConfigMap", set()),
    "v1/secrets": ("Secret", set()),
    "v1/services": ("Service", set()),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", set()),
    "v1/events": ("Event", set()),
    "v1/namespaces": ("Namespace", set()),  # kopf waits to discover it, even when watching all namespaces
}  # and kopf's peering resources, as the chart's crds/ declares them (peering_resources)
CLUSTER_SCOPED = {"Namespace"}
PEERING_CRDS = Path(__file__).resolve().parents[2] / "charts" / "kubetune" / "crds" / "kopf-peering.yaml"
PATHS = {
    "FinetuneJob": "/apis/kubetune.dev/v1alpha1/namespaces/{ns}/finetunejobs",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Service": "/api/v1/namespaces/{ns}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Event": "/api/v1/namespaces/{ns}/events",
    "ClusterKopfPeering": "/apis/kopf.dev/v1/clusterkopfpeerings",
}
NAMESPACE = "ml"


OPERATOR_TOKEN = "kubetune-operator"  # the operator's kubeconfig user; RBAC applies to it
VERB = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}
PLURALS = {"FinetuneJob": ("kubetune.dev", "finetunejobs")}
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus what the API server does that kubetune meets:

    - fills in on create: generateName (kopf's events), uid (ownerReferences), creationTimestamp, resourceVersion,
      a Service's clusterIP (which the kubelet's service-link variables carry: tests/support/kubelet.py);
    - 422 for a name or label the server refuses (`object_problems`), 403 where `rbac` (when set) forbids;
    - `kueue`: Kueue's mutating webhook, which creates every Job labelled with a queue name suspended
      (kueue.sigs.k8s.io/docs/tasks/run/jobs); the test admits it by unsuspending;
    - garbage collection: children of a deleted owner (ownerReferences uid) go `gc_delay` seconds later, as
      the real collector does in the background (kubernetes.io/docs/concepts/architecture/garbage-collection),
      unless the delete orphans them: `propagationPolicy=Orphan`, or no policy on a batch/v1 Job, whose
      resource default is orphan (DeleteOptions in the API reference: "the resource-specific default policy";
      the API server warns "child pods are preserved by default when jobs are deleted"). Orphans lose their
      ownerReference to the deleted owner and stay;
    - the status subresource (FinetuneJobs, Jobs, Pods): a PATCH or PUT of the object ignores its `status`, one of
      `/status` ignores everything else (kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
      custom-resource-definitions, "Status subresource"; the same holds for the built-in kinds);
    - resourceVersion: every write gives the object a new one, and a PATCH or PUT (of the object or of its
      `/status`) whose `metadata.resourceVersion` is not the stored one is refused with 409 Conflict: the
      optimistic concurrency of the API conventions ("Concurrency Control and Consistency") and of
      kubernetes.io/docs/reference/using-api/api-concepts ("Resource versions"). An object deleted and
      re-created under the same name has a new resourceVersion, so a write meant for the old one fails.
    """

    rbac: RBAC | None = None
    kueue: bool = False
    gc_delay: float = 0.0
    # Every request served, oldest first: what tests count. kmock's own history holds only those in flight,
    # because its matching re-filters that whole history for every request and every reaction (O(n) per request):
    # over a flow's ~10^4 requests the test process took a whole core, which the trainer pods lacked.
    served: list[Any] = attrs.field(factory=list, init=False)
    _collecting: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)
    _version: int = attrs.field(default=0, init=False)

    async def _handle(self, request: Any) -> Any:
        try:
            return await self._emulate(request)
        finally:
            self._retire(request)

    def _retire(self, request: Any) -> None:
        """Move a finished request from kmock's history (scanned at every match) to `served` (never scanned)."""
        for i in range(len(self._requests) - 1, -1, -1):
            if self._requests[i] is request:
                del self._requests[i]
                break
        self.served.append(request)

    async def _emulate(self, request: Any) -> Any:
        if request.resource is not None:
            self._authorize(request)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            self._admit(request.data)
        key = (request.resource, request.namespace, request.name)
        if request.action == kmock.action.UPDATE and isinstance(request.data, dict):
            self._precondition(key, request.data)
            split_status(request.resource, request.subresource, request.data)
            request.data.setdefault("metadata", {})["resourceVersion"] = self._next_version()
        deleting = request.action == kmock.action.DELETE and request.resource is not None and request.name
        uid = self._uid(key) if deleting else None
        response = await super()._handle(request)
        if uid and key in self._objects and self._objects[key].deleted:
            if propagation(request) == "Orphan":
                await self._orphan(uid)
                return response
            task = asyncio.create_task(self._collect(uid))
            self._collecting.add(task)
            task.add_done_callback(self._collecting.discard)
        return response

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _precondition(self, key: Any, body: dict[str, Any]) -> None:
        """409 when the write names a resourceVersion that is not the stored object's."""
        given = (body.get("metadata") or {}).get("resourceVersion")
        if given is None or key not in self._objects or self._objects[key].deleted:
            return
        stored = (self._objects[key].raw.get("metadata") or {}).get("resourceVersion")
        if given != stored:
            raise Refused(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0].plural} "{key[2]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
            )

    def _uid(self, key: Any) -> str | None:
        if key not in self._objects or self._objects[key].deleted:
            return None
        return (self._objects[key].raw.get("metadata") or {}).get("uid")

    def _authorize(self, request: Any) -> None:
        """RBAC applies to the operator (authenticated by its token); tests and the local node act as admin."""
        if self.rbac is None or request.headers.get("Authorization") != f"Bearer {OPERATOR_TOKEN}":
            return
        if not request.resource.plural:
            return  # discovery (/api, /apis/<group>/<version>): every authenticated user may read it
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        verb = VERB.get(request.action.value if request.action else "", "")
        if request.action == kmock.action.UPDATE:
            verb = "patch" if str(request.method).upper().endswith("PATCH") else "update"
        self.rbac.check(verb, request.resource.group or "", resource, request.namespace)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            for ref in (request.data.get("metadata") or {}).get("ownerReferences") or []:
                if ref.get("blockOwnerDeletion") and ref.get("kind") in PLURALS:
                    group, plural = PLURALS[ref["kind"]]
                    self.rbac.check("update", group, f"{plural}/finalizers", request.namespace)

    def _admit(self, obj: dict[str, Any]) -> None:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        problems = object_problems(obj)
        if problems:
            raise Refused(422, "Invalid", f'{obj.get("kind")} "{meta.get("name")}" is invalid: ' + "; ".join(problems))
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = self._next_version()
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if obj.get("kind") == "Service" and not (obj.get("spec") or {}).get("clusterIP"):
            # A ClusterIP Service gets its address from the server (headless ones keep "None").
            obj.setdefault("spec", {})["clusterIP"] = f"10.96.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
        if self.kueue and obj.get("kind") == "Job" and KUEUE_LABEL in (meta.get("labels") or {}):
            obj.setdefault("spec", {})["suspend"] = True

    async def _orphan(self, owner_uid: str) -> None:
        """What the garbage collector does for an orphaning delete: the dependents lose that ownerReference."""
        async with self._lock:
            for key, obj in self._objects.items():
                refs = [] if obj.deleted else (obj.raw.get("metadata") or {}).get("ownerReferences") or []
                if any(r.get("uid") == owner_uid for r in refs):
                    obj.patch({"metadata": {"ownerReferences": [r for r in refs if r.get("uid") != owner_uid]}})
                    await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})

    async def _collect(self, owner_uid: str) -> None:
        """Background deletion of the dependents of a deleted owner (and theirs, in turn)."""
        await asyncio.sleep(self.gc_delay)
        async with self._lock:
            doomed = [
                key
                for key, obj in self._objects.items()
                if not obj.deleted
                and any(r.get("uid") == owner_uid for r in (obj.raw.get("metadata") or {}).get("ownerReferences") or [])
            ]
            uids = []
            for key in doomed:
                raw = self._objects[key].raw
                uids.append((raw.get("metadata") or {}).get("uid"))
                self._objects[key].delete()
                await self._buses[key[0]].put({"type": "DELETED", "object": raw})
        for uid in filter(None, uids):
            await self._collect(uid)


STATUS_SUBRESOURCE = {("kubetune.dev", "finetunejobs"), ("batch", "jobs"), ("", "pods")}


def split_status(resource: Any, subresource: str | None, body: dict[str, Any]) -> None:
    """Keep only the part of an update its endpoint may change (the object's spec and metadata, or its status)."""
    if resource is None or (resource.group or "", resource.plural) not in STATUS_SUBRESOURCE:
        return
    if subresource == "status":
        for key in [k for k in body if k not in ("status", "apiVersion", "kind")]:
            del body[key]
    elif subresource is None:
        body.pop("status", None)


def propagation(request: Any) -> str:
    """A delete's propagation policy: the query parameter, else the DeleteOptions body, else the resource default."""
    body = request.data if isinstance(request.data, dict) else {}
    given = (request.params or {}).get("propagationPolicy") or body.get("propagationPolicy")
    if given:
        return str(given)
    if body.get("orphanDependents") is True:
        return "Orphan"
    resource = request.resource
    return "Orphan" if (resource.group, resource.plural) == ("batch", "jobs") else "Background"


class Cluster:
    """A tiny async client of the emulated API server, plus the pod logs it serves."""

    def __init__(self, session: aiohttp.ClientSession, kmock: Any):
        self.session = session
        self.kmock = kmock
        self.logs: dict[str, str | Refused] = {}  # pod name -> log text (or the error), at pods/{name}/log

    def serve_log(self, request: Any) -> bytes:
        """The kubelet's log endpoint, through the API server: the text, or its error (5xx: node NotReady)."""
        log = self.logs.get(request.name, "")
        if isinstance(log, Refused):
            raise log
        return log.encode()

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

    async def patch(
        self, kind: str, name: str, body: dict[str, Any], sub: str | None = None, ns: str = NAMESPACE
    ) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(self.path(kind, name, ns, sub), data=json.dumps(body), headers=headers) as r:
            assert r.status < 300, await r.text()

    async def delete(self, kind: str, name: str, ns: str = NAMESPACE, propagation: str | None = None) -> bool:
        params = {"propagationPolicy": propagation} if propagation else {}
        async with self.session.delete(self.path(kind, name, ns), params=params) as r:
            return r.status < 300

    def requests(self, method: str, kind: str) -> int:
        """How many requests of this method reached this resource's collection or objects."""
        prefix = PATHS[kind].split("{ns}")[-1]
        verb = kmock.method(method)
        return sum(1 for r in self.kmock.served if r.method == verb and prefix in str(r.url.path))


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


def peering_resources() -> dict[str, Any]:
    """kopf's peering resources (replicas > 1) exactly as the chart's CRDs declare them: their scope and their
    subresources (none: kopf writes a peering's status through the object itself, and a status subresource
    would make the server drop it; kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
    custom-resource-definitions, "Status subresource")."""
    import yaml

    out = {}
    for crd in yaml.safe_load_all(PEERING_CRDS.read_text()):
        spec = crd["spec"]
        (version,) = spec["versions"]
        out[f"{spec['group']}/{version['name']}/{spec['names']['plural']}"] = kmock.ResourceInfo(
            kind=spec["names"]["kind"],
            namespaced=spec["scope"] == "Namespaced",
            verbs=VERBS,
            subresources=set(version.get("subresources") or {}),
        )
    return out


@pytest.fixture
async def cluster(kmock: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    for resource, (kind, subresources) in RESOURCES.items():
        kmock.resources[resource] = kmock.ResourceInfo(
            kind=kind, namespaced=kind not in CLUSTER_SCOPED, verbs=VERBS, subresources=subresources
        )
    kmock.resources.update(peering_resources())
    async with aiohttp.ClientSession(base_url=str(kmock.url)) as session:
        api = Cluster(session, kmock)
        kmock["get", kmock.resource("v1/pods"), kmock.subresource("log")] << api.serve_log
        kubeconfig = tmp_path / "kubeconfig"
        server = str(kmock.url).rstrip("/")
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                    "users": [{"name": "operator", "user": {"token": OPERATOR_TOKEN}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator"}}],
                    "current-context": "kmock",
                }
            )
        )
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("KUBETUNE_POLL_SECONDS", "0.2")
        monkeypatch.setenv("KUBETUNE_METRICS_PORT", "0")
        yield api


# --- a FinetuneJob and the Job controller's and kubelet's part, played by hand ------------------------------
NAMES = Names.of("quotes")


def finetunejob(name: str = "quotes", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FinetuneJob",
        "metadata": {"name": name},
        "spec": {
            "storage": {
                "model": {"claimName": "models", "subPath": "smollm2"},
                "data": {"claimName": "data"},
                "output": {"claimName": "runs", "subPath": name},
            },
            "training": {"data": {"path": ["quotes.jsonl"]}, "training": {"max_steps": 5}},
            **spec,
        },
    }


async def pod(
    api: Cluster,
    index: int,
    phase: str,
    suffix: str = "a",
    exit_code: int | None = None,
    message: str = "",
    created: str = "2026-11-22T10:00:00Z",
) -> str:
    name = f"{NAMES.workers}-{index}-{suffix}"
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {"name": "trainer", "state": {"terminated": {"exitCode": exit_code, "message": message}}}
        ]
    metadata = await job_pod_metadata(api, NAMES.workers, name)
    metadata["labels"][INDEX_LABEL] = str(index)
    await api.create(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {**metadata, "creationTimestamp": created}, "status": status}
    )
    return name


async def job_pod_metadata(api: Cluster, job_name: str, name: str) -> dict[str, Any]:
    """A pod's metadata as the Job controller writes it for an existing Job: the template's labels plus the Job's
    name and uid (kubernetes.io/docs/reference/labels-annotations-taints), and the Job as controller owner."""
    job = await api.get("Job", job_name)
    assert job is not None, f"Job {job_name} does not exist: the Job controller makes no pods for it"
    uid = job["metadata"]["uid"]
    template = ((job["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    controller = {CONTROLLER_UID_LABEL: uid, "controller-uid": uid, "batch.kubernetes.io/job-name": job_name}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid, "controller": True}
    return {"name": name, "labels": {**template, **controller, "job-name": job_name}, "ownerReferences": [owner]}


async def failed_create(api: Cluster, job_name: str, message: str) -> None:
    """The Job controller's Event when the API server refuses its pod (a ResourceQuota, a LimitRange, a missing
    PriorityClass, an admission webhook): a Warning FailedCreate on the Job, and no pod."""
    job = await api.get("Job", job_name)
    assert job is not None, job_name
    involved = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "namespace": NAMESPACE}
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{job_name}."},
            "involvedObject": {**involved, "uid": job["metadata"]["uid"]},
            "reason": "FailedCreate",
            "type": "Warning",
            "message": f"Error creating: {message}",
            "source": {"component": "job-controller"},
            "lastTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )


def terminated(phase: str, exit_code: int, message: str) -> dict[str, Any]:
    state = {"terminated": {"exitCode": exit_code, "message": message}}
    return {"status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}}


async def job_status(api: Cluster, name: str, **status: Any) -> None:
    await api.patch("Job", name, {"status": status}, sub="status")


def condition(type_: str, reason: str = "", message: str = "") -> list[dict[str, str]]:
    return [{"type": type_, "status": "True", "reason": reason, "message": message}]


async def phase_is(api: Cluster, phase: str, name: str = "quotes") -> dict[str, Any] | None:
    async def probe() -> dict[str, Any] | None:
        obj = await api.get("FinetuneJob", name)
        return obj if obj and (obj.get("status") or {}).get("phase") == phase else None

    return await eventually(probe, what=f"phase {phase}")


async def events_seen(api: Cluster, *reasons: str, type_: str | None = None) -> list[dict[str, Any]]:
    """The Events (of `type_`, if given) once every one of `reasons` is among them.

    kopf posts Events from an in-memory queue, after the status patch a test has just waited for, and
    drops what is still queued when the operator stops: wait for them inside `operator()`.
    """

    async def probe() -> list[dict[str, Any]] | None:
        events = [e for e in await api.list("Event") if type_ is None or e.get("type") == type_]
        return events if set(reasons) <= {e.get("reason") for e in events} else None

    return await eventually(probe, what=f"{type_ or 'any'} Events {sorted(reasons)}")


@contextlib.asynccontextmanager
async def operator(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[KopfRunner]:
    """The real operator (kubetune-operator's own command line) in a background thread. `env` is what the
    chart would set (the operator also reads it from os.environ: set it there too with monkeypatch).

    It is stopped from another thread because the API emulator (and the local kubelet) serve this
    test's event loop, and kopf can still be waiting on the API while it stops: a blocking join here
    leaves that request unanswered until the join gives up (CI saw it: 30 s, then "didn't stop").
    """
    runner = KopfRunner(command(list(args) or ["--standalone"], env or {}), timeout=30)
    runner.__enter__()
    try:
        yield runner
    except BaseException as exc:
        await asyncio.to_thread(runner.__exit__, type(exc), exc, exc.__traceback__)
        raise
    await asyncio.to_thread(runner.__exit__, None, None, None)
    assert runner.exception is None, runner.exception


def chart_objects(values: dict[str, Any] | None = None, namespace: str = "kubetune-system") -> list[dict[str, Any]]:
    """The chart's objects as Helm renders them (Helm's Go SDK as a wheel)."""
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK as a wheel) is not installed")
    import yaml

    chart = Path(__file__).resolve().parents[2] / "charts" / "kubetune"
    with helm.Chart.load(str(chart)) as loaded:
        files = loaded.render(values or {}, name="kubetune", namespace=namespace)
    return [d for path, text in files.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]


def chart_rbac(values: dict[str, Any] | None = None) -> RBAC:
    """The operator's rights as the chart grants them. Values that name no watch mode get the all-namespaces
    one (watch.namespaced: false), which matches `operator()`'s default command line (--all-namespaces)."""
    return RBAC.from_manifests(chart_objects({"watch": {"namespaced": False}, **(values or {})}))
