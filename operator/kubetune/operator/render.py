"""Pure renderers: a FinetuneJob in, the manifests of the objects it owns out.

No Kubernetes client here (the import-linter contract forbids it): handlers
read, call these, apply, and patch status. Everything a worker pod needs to
become a kubetune worker is in its environment, which must match the trainer's
container contract (docs/user/containers.md); tests parse it with the
trainer's own functions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api import backends, contract
from kubetune.api.config import TrainConfig
from kubetune.api.finetunejob import GROUP, KIND, VERSION, FinetuneJobSpec, RemoteSources, SecretKeyRef
from kubetune.api.remote import is_remote
from kubetune.operator.settings import PodSettings

PORT = 29500
CONTAINER = "trainer"
MOUNTS = {"model": contract.MOUNT_MODEL, "data": contract.MOUNT_DATA, "output": contract.MOUNT_OUTPUT}
LABEL_JOB = "kubetune.dev/finetunejob"
LABEL_ROLE = "kubetune.dev/role"
LABEL_RUN = "kubetune.dev/run"  # the FinetuneJob's uid on its pods: the Service selects this run's pods only
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"  # Kueue admits Jobs by this label on the Job itself
CACHE_MOUNT = "/cache"  # spec.sources.cache: remote models and data, fetched once by the initializer


def pod_security_context() -> dict[str, Any]:
    """The "restricted" Pod Security Standard, as the images' own user (volumes group-owned by it too)."""
    uid = contract.IMAGE_UID
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        # Chown a claim only when its root is not the group's yet: not every file of a large model at every start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def short_name(name: str, suffix: str, limit: int = 63) -> str:
    """`<name>-<suffix>` within a DNS label; long names keep a hash so they stay unique."""
    full = f"{name}-{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    # Indexed Job pods are named <job>-<index>-<random>; leave room for the index as well.
    keep = limit - len(suffix) - len(digest) - 2
    return f"{name[:keep].rstrip('-')}-{digest}-{suffix}"


@dataclass(frozen=True)
class Names:
    config: str
    service: str
    workers: str
    merge: str
    initializer: str  # `kubetune fetch`, for remote sources
    network_policy: str  # with the chart's networkPolicy.enabled

    @staticmethod
    def of(name: str) -> Names:
        return Names(
            config=short_name(name, "config"),
            # The headless Service is the pods' DNS subdomain: hostnames <workers>-<index>.<service> read as
            # "worker i of this job's workers", so it carries the same suffix.
            service=short_name(name, "workers"),
            # Worker pod hostnames are <workers>-<index>: keep room for up to 3 index digits.
            workers=short_name(name, "workers", 59),
            merge=short_name(name, "merge"),
            initializer=short_name(name, "fetch"),
            network_policy=short_name(name, "net"),
        )


def owner_reference(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(meta: dict[str, Any], name: str, role: str) -> dict[str, Any]:
    """A child's metadata: in the FinetuneJob's namespace, labelled with it and its role, owned by it."""
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {LABEL_JOB: meta["name"], LABEL_ROLE: role, "app.kubernetes.io/managed-by": "kubetune-operator"},
        "ownerReferences": [owner_reference(meta)],
    }


def container_config(spec: FinetuneJobSpec) -> TrainConfig:
    """The trainer config the pods get: local paths point at the mounts (data paths are relative to /data);
    remote ones (hf://, s3://, https://) stay as given: the trainer resolves them in the cache (/cache)."""
    data = spec.training.data

    def on_data(path: str) -> str:
        return path if path.startswith("/") or is_remote(path) else f"{MOUNTS['data']}/{path}"

    paths = [on_data(p) for p in data.path] or [MOUNTS["data"]]
    model = spec.training.model.path if is_remote(spec.training.model.path) else MOUNTS["model"]
    return spec.training.model_copy(
        update={
            "model": spec.training.model.model_copy(update={"path": model}),
            "data": data.model_copy(update={"path": paths, "eval_path": [on_data(p) for p in data.eval_path]}),
            "output_dir": MOUNTS["output"],
        }
    )


def cache_volume(sources: RemoteSources, writable: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) for the cache claim: read-write only where `kubetune fetch` fills it (the
    initializer); the others read it offline through the sources lock, so a compromised worker cannot change
    what the next job reuses (docs/security.md)."""
    volume = {"name": "cache", "persistentVolumeClaim": {"claimName": sources.cache.claim_name}}
    mount = {"name": "cache", "mountPath": CACHE_MOUNT, "readOnly": not writable, "subPath": sources.cache.sub_path}
    return volume, mount


def pushes(spec: FinetuneJobSpec, scheme: str) -> bool:
    """Whether the run's output.push_to goes to `scheme` (s3, hf): the pods that push need its credentials."""
    return (spec.training.output.push_to or "").startswith(f"{scheme}://")


def secret_file(
    name: str, ref: SecretKeyRef, env_name: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts, env) for one Secret key mounted as a file whose path is in `env_name`."""
    items = [{"key": ref.key, "path": "token"}]
    return (
        [{"name": f"{name}-token", "secret": {"secretName": ref.name, "items": items}}],
        [{"name": f"{name}-token", "mountPath": f"/secrets/{name}", "readOnly": True}],
        [{"name": env_name, "value": f"/secrets/{name}/token"}],
    )


Credentials = tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]


def credentials(spec: FinetuneJobSpec, fetches: bool) -> Credentials:
    """(volumes, volumeMounts, env, envFrom) of the credentials a pod needs, and no more: the pod that fetches
    (the initializer) gets every source's; one that pushes (workers, merge) only the push target's."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, Any]] = []
    wanted = [
        (spec.hf_token_secret, "hf", contract.ENV_HF_TOKEN_FILE, fetches or pushes(spec, "hf")),
        (spec.http_token_secret, "http", contract.ENV_HTTP_TOKEN_FILE, fetches),
    ]
    for ref, name, env_name, needed in wanted:
        if ref and needed:
            v, m, e = secret_file(name, ref, env_name)
            volumes, mounts, env = volumes + v, mounts + m, env + e
    s3 = spec.sources.s3_credentials_secret if spec.sources else None
    env_from = [{"secretRef": {"name": s3}}] if s3 and (fetches or pushes(spec, "s3")) else []
    return volumes, mounts, env, env_from


def claim_mounts(spec: FinetuneJobSpec, wanted: list[str]) -> list[str]:
    """The storage claims of `wanted` (model, data, output) that the spec gives: remote paths need none."""
    return [m for m in wanted if getattr(spec.storage, m) is not None]


def render_configmap(meta: dict[str, Any], spec: FinetuneJobSpec) -> dict[str, Any]:
    config = yaml.safe_dump(container_config(spec).model_dump(mode="json"), sort_keys=False)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(meta, Names.of(meta["name"]).config, "config"),
        "data": {contract.CONFIG_FILE_NAME: config},
    }


def render_service(meta: dict[str, Any]) -> dict[str, Any]:
    """Headless: each worker gets a stable DNS name <workers>-<index>.<service> for the rendezvous."""
    names = Names.of(meta["name"])
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(meta, names.service, "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # the rendezvous happens before any pod is ready
            # This run's workers only: a deleted run's Terminating pods of the same name are not rendezvous peers.
            "selector": {LABEL_JOB: meta["name"], LABEL_ROLE: "worker", LABEL_RUN: meta["uid"]},
            "ports": [{"name": "rendezvous", "port": PORT, "targetPort": PORT}],
        },
    }


def render_network_policy(meta: dict[str, Any], settings: PodSettings) -> dict[str, Any]:
    """The run's pods accept connections only from each other (torchrun's TCPStore exchanges pickled objects:
    no other pod may join the rendezvous); they reach each other, DNS, and what the egress rules allow."""
    run = {"matchLabels": {LABEL_RUN: meta["uid"]}}
    dns = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}
    egress = [{"to": [{"podSelector": run}]}, dns, *settings.network_egress] if settings.network_egress else [{}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_metadata(meta, Names.of(meta["name"]).network_policy, "network-policy"),
        "spec": {
            "podSelector": run,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": run}]}],
            "egress": egress,
        },
    }


RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@dataclass(frozen=True)
class PodRole:
    """What differs between the worker, merge and initializer pods; the rest is one template (`pod_template`)."""

    role: str  # the LABEL_ROLE value
    args: list[str]
    claims: tuple[str, ...]  # the storage claims it mounts (model, data, output), where the spec gives them
    env: tuple[dict[str, Any], ...] = ()
    resources: dict[str, Any] | None = None  # None: spec.resources, else the backend's defaults
    scratch_output: bool = False  # an emptyDir at /output instead of the claim (the image checks it is writable)
    fetches: bool = False  # runs `kubetune fetch`: the only pod that writes the cache and holds every source credential


def _volumes(
    meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings, role: PodRole
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes, the container's mounts, and the env the mounts bring (cache dir and sources lock,
    token files)."""
    names = Names.of(meta["name"])
    env: list[dict[str, Any]] = []
    read_only = {"model": True, "data": True, "output": False}
    claims = {m: getattr(spec.storage, m) for m in claim_mounts(spec, list(role.claims))}
    volumes: list[dict[str, Any]] = [
        {"name": m, "persistentVolumeClaim": {"claimName": ref.claim_name, "readOnly": read_only[m]}}
        for m, ref in claims.items()
    ]
    volume_mounts = [
        {"name": m, "mountPath": MOUNTS[m], "readOnly": read_only[m], "subPath": ref.sub_path}
        for m, ref in claims.items()
    ]
    if spec.sources:
        volume, mount = cache_volume(spec.sources, writable=role.fetches)
        volumes.append(volume)
        volume_mounts.append(mount)
        # The initializer writes the lock under this run's uid; the others read exactly what it fetched.
        env += [
            {"name": contract.ENV_CACHE_DIR, "value": CACHE_MOUNT},
            {"name": contract.ENV_SOURCES_LOCK, "value": meta["uid"]},
        ]
    volumes += [
        {"name": "config", "configMap": {"name": names.config}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size}},
        # Caches and temp files (the root filesystem is read-only), bounded: past it the kubelet evicts the pod.
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}},
    ]
    volume_mounts += [
        {"name": "config", "mountPath": contract.MOUNT_CONFIG, "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        {"name": "tmp", "mountPath": contract.WRITABLE_DIR},
    ]
    if role.scratch_output:
        volumes.append({"name": "scratch", "emptyDir": {}})
        volume_mounts.append({"name": "scratch", "mountPath": contract.MOUNT_OUTPUT})
    token_volumes, token_mounts, token_env, _ = credentials(spec, role.fetches)
    return volumes + token_volumes, volume_mounts + token_mounts, env + token_env


def cache_env() -> list[dict[str, str]]:
    """HOME and the caches torch, Triton, CUDA and Hugging Face write, under the pod's writable /tmp (the root
    filesystem is read-only): contract.CACHE_ENV, as env entries."""
    return [{"name": k, "value": v} for k, v in contract.CACHE_ENV.items()]


def pod_template(meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings, role: PodRole) -> dict[str, Any]:
    """The one pod template of every Job the operator makes: restricted security, no API token, no service
    links, the run's config, its volumes, and placed by the FinetuneJob's scheduling."""
    volumes, volume_mounts, mount_env = _volumes(meta, spec, settings, role)
    resources = role.resources or (
        spec.resources.model_dump() if spec.resources else backends.get(spec.backend).resources()
    )
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image or settings.images[spec.backend],
        "args": role.args,
        # HOME and the libraries' caches under the writable /tmp first: what follows may override them.
        "env": [*cache_env(), {"name": contract.ENV_CONFIG, "value": contract.CONFIG_FILE}, *role.env, *mount_env],
        "resources": resources,
        "volumeMounts": volume_mounts,
        "securityContext": RESTRICTED_CONTAINER,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    env_from = credentials(spec, role.fetches)[3]
    if env_from:
        container["envFrom"] = env_from
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # trainer pods never talk to the Kubernetes API
        # No kubelet variables for the namespace's Services: KUBETUNE_METRICS_PORT (the chart's metrics
        # Service, namespaced installs) would reach the trainer as a config key; the rendezvous uses DNS.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    labels = {**pod_labels(meta, spec, role.role), LABEL_RUN: meta["uid"]}
    return {"metadata": {"labels": labels}, "spec": _place(pod, spec, settings)}


def _place(pod: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings) -> dict[str, Any]:
    """Where and how the pod may run: pull secrets and the FinetuneJob's scheduling."""
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    sched = spec.scheduling
    if sched.node_selector:
        pod["nodeSelector"] = sched.node_selector
    if sched.tolerations:
        pod["tolerations"] = sched.tolerations
    if sched.affinity:
        pod["affinity"] = sched.affinity
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    return pod


def pod_labels(meta: dict[str, Any], spec: FinetuneJobSpec, role: str) -> dict[str, str]:
    """The labels of a Job and of its pods: the FinetuneJob, the role, and the Kueue queue when queued."""
    labels = {LABEL_JOB: meta["name"], LABEL_ROLE: role}
    if spec.scheduling.queue_name:
        labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queue_name
    return labels


def fail_fast_rule() -> dict[str, Any]:
    """podFailurePolicy's rule for every Job: a permanent exit code (bad config, data or model, a diverged
    run, a missing or denied source) would fail the same way again, so the Job fails at once instead of
    spending backoffLimit on retries."""
    codes = sorted(int(code) for code in contract.PERMANENT_EXIT_CODES)
    return {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": codes}}


def child_job(meta: dict[str, Any], name: str, role: str, spec: FinetuneJobSpec, job_spec: dict[str, Any]) -> dict:
    """A batch/v1 Job child: its labels (Kueue's queue label included) on the Job as on its pods."""
    metadata = child_metadata(meta, name, role)
    metadata["labels"].update(pod_labels(meta, spec, role))
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def render_worker_job(meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings) -> dict[str, Any]:
    """The Indexed Job: completions = parallelism = nodes; node rank from JOB_COMPLETION_INDEX."""
    names = Names.of(meta["name"])
    env = (
        {"name": contract.ENV_PROGRESS, "value": "json"},
        {"name": contract.ENV_NNODES, "value": str(spec.nodes)},
        {"name": contract.ENV_NPROC_PER_NODE, "value": str(spec.procs_per_node)},
        {"name": contract.ENV_MASTER_ADDR, "value": f"{names.workers}-0.{names.service}"},
        {"name": contract.ENV_MASTER_PORT, "value": str(PORT)},
    )
    template = pod_template(meta, spec, settings, PodRole("worker", ["train"], ("model", "data", "output"), env))
    template["spec"]["subdomain"] = names.service  # with the headless Service: <workers>-<index>.<service>
    preempted = [int(contract.ExitCode.PREEMPTED)]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": spec.nodes,
        "parallelism": spec.nodes,
        "backoffLimit": spec.run_policy.backoff_limit,
        # A preempted worker (SIGTERM -> checkpoint -> exit 75) is retried without using up backoffLimit.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "Ignore",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": preempted},
                },
                fail_fast_rule(),
            ]
        },
        # Queued: created suspended, as Kueue's webhook would make it anyway; Kueue unsuspends it on admission.
        "suspend": spec.run_policy.suspend or bool(spec.scheduling.queue_name),
        "template": template,
    }
    if spec.run_policy.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    return child_job(meta, names.workers, "worker", spec, job_spec)


def render_merge_job(meta: dict[str, Any], spec: FinetuneJobSpec, settings: PodSettings) -> dict[str, Any]:
    """`kubetune merge` on the output volume, once training succeeded."""
    role = PodRole(
        "merge",
        ["merge", "--output-dir", MOUNTS["output"]],
        ("model", "output"),
        ({"name": contract.ENV_PROGRESS, "value": "json"},),
    )
    job_spec = {"backoffLimit": 1, "template": pod_template(meta, spec, settings, role)}
    # Queued like the workers: Kueue admits a Job by the label on the Job (the merge pod may hold a GPU).
    return child_job(meta, Names.of(meta["name"]).merge, "merge", spec, job_spec)
