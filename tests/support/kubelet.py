"""The kubelet of the local node: it runs the pods it is given and reports them, written from the Kubernetes docs.

Each rule names the page it encodes (kubernetes.io/docs/...):

- Service links (concepts/services-networking/service/#environment-variables; kubelet's pkg/kubelet/envvars):
  with `enableServiceLinks` on (the default), every container gets variables for each Service of the pod's
  namespace that has a cluster IP (headless ones give none), in the Docker-links form too. The pod's own
  `env` and `envFrom` override them (`pod_env`).
- The environment (tasks/inject-data-application/environment-variable-expose-pod-information): `env` values,
  `valueFrom.fieldRef` on the pod's metadata (the Job controller's JOB_COMPLETION_INDEX is one), and `envFrom`
  Secrets (every key of the Secret's data; a missing Secret is CreateContainerConfigError).
- Images (concepts/containers/images/#imagepullbackoff): an image the node cannot pull leaves the pod Pending,
  its container waiting in ImagePullBackOff (`--pull never` here: an image not on this node).
- Exit codes: a container killed by a signal exits 128 + the signal (137 after SIGKILL), as the runtime reports.
- Termination messages (tasks/debug/debug-application/determine-reason-pod-failure): the file at
  /dev/termination-log, at most 4096 bytes; with FallbackToLogsOnError and an empty file, a failed container's
  last log output (2048 bytes) instead.
- Termination (concepts/workloads/pods/pod-lifecycle/#pod-termination): a deleted pod's container gets SIGTERM,
  then SIGKILL once terminationGracePeriodSeconds (or the delete's own grace period) has passed.
- Disruptions (concepts/workloads/pods/disruptions/#pod-disruption-conditions): a pod evicted, preempted or
  terminated by the kubelet under node pressure first gets the DisruptionTarget condition (status True, a
  reason naming the cause), then is terminated as above; node-pressure eviction uses the pods' grace period
  or 0 for a hard threshold (concepts/scheduling-eviction/node-pressure-eviction).

Pods run in one of two modes (localnode.mode()): `container`, a real container from the pod's image with its
user, fsGroup, read-only root, dropped capabilities, no-new-privileges, every volumeMount and the Indexed Job's
hostnames on the host network; or `process`, the image's entrypoint (docker/entrypoint.sh) as a local process
in a private mount namespace with the same mounts bind-mounted (needs root). What it does not do: scheduling,
image pulls, networking beyond one host's loopback, resource requests and limits, secret volumes, and pod
restarts (restartPolicy is Never for every pod the operator renders).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import math
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import engine

from kubetune.api import quantity
from kubetune.api.contract import IMAGE_UID, TERMINATION_LOG
from kubetune.operator.observed import INDEX_LABEL as INDEX_ANNOTATION  # the Job controller's, label and annotation
from kubetune.operator.render import CONTAINER as CONTAINER_NAME

if TYPE_CHECKING:
    from kube import Cluster

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
CONTAINER_PREFIX = "kubetune-e2e-"  # container names: several test sessions may share one engine
TERMINATION_MESSAGE_LIMIT = 4096  # bytes of /dev/termination-log the kubelet keeps
FALLBACK_LOG_LIMIT = 2048  # bytes of log FallbackToLogsOnError keeps
DISRUPTION_TARGET = "DisruptionTarget"
# The reasons of a DisruptionTarget condition (pod disruption conditions, in the docs' words).
DISRUPTION_REASONS = {
    "PreemptionByScheduler": "the scheduler preempts it to make room for a pod of higher priority",
    "DeletionByTaintManager": "a NoExecute taint it does not tolerate",
    "EvictionByEvictionAPI": "an eviction through the Eviction API (a drain, Kueue)",
    "DeletionByPodGC": "its node is gone",
    "TerminationByKubelet": "node-pressure eviction, or a graceful node shutdown",
}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- pure rules ---------------------------------------------------------------------------------------------------


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_link_env(services: list[dict[str, Any]]) -> dict[str, str]:
    """The variables the kubelet injects for these Services (the docs' redis-primary example, for any name)."""
    env: dict[str, str] = {}
    for service in services:
        spec = service.get("spec") or {}
        ip, ports = spec.get("clusterIP"), spec.get("ports") or []
        if not ip or ip == "None" or not ports:
            continue
        prefix = _env_name(service["metadata"]["name"])
        env[f"{prefix}_SERVICE_HOST"] = ip
        env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
        for port in ports:
            if port.get("name"):
                env[f"{prefix}_SERVICE_PORT_{_env_name(port['name'])}"] = str(port["port"])
        first = ports[0]
        env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
        for port in ports:
            proto = port.get("protocol", "TCP")
            link = f"{prefix}_PORT_{port['port']}_{proto}"
            env[link] = f"{proto.lower()}://{ip}:{port['port']}"
            env[f"{link}_PROTO"] = proto.lower()
            env[f"{link}_PORT"] = str(port["port"])
            env[f"{link}_ADDR"] = ip
    return env


def pod_env(
    pod_spec: dict[str, Any], services: list[dict[str, Any]], env_from: dict[str, str], env: dict[str, str]
) -> dict[str, str]:
    """A container's environment as the kubelet builds it: service links (unless switched off), then envFrom,
    then env, each overriding the one before."""
    links = service_link_env(services) if pod_spec.get("enableServiceLinks", True) else {}
    return {**links, **env_from, **env}


def field_ref(pod: dict[str, Any], path: str) -> str:
    """A downward-API fieldRef on the pod's metadata: metadata.name, .namespace, .labels['k'], .annotations['k']."""
    meta = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace"):
        return str(meta[path.split(".", 1)[1]])
    found = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    assert found, f"the local node does not emulate fieldRef {path}"
    return str((meta.get(found[1]) or {})[found[2]])


def container_env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's `env`: literal values and fieldRefs (secretKeyRef and the rest are not emulated)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            ref = (entry.get("valueFrom") or {}).get("fieldRef")
            assert ref, f"the local node does not emulate env {entry}"
            env[entry["name"]] = field_ref(pod, ref["fieldPath"])
    return env


def exit_code(returncode: int) -> int:
    """A process's return code as the container runtime reports it: a signal N is exit 128 + N."""
    return returncode if returncode >= 0 else 128 - returncode


def termination_message(written: str, log: str, code: int, policy: str | None) -> str:
    """The termination message of a terminated container: its file, else (FallbackToLogsOnError, failed) its log."""
    message = written[:TERMINATION_MESSAGE_LIMIT]
    if not message and code != 0 and policy == "FallbackToLogsOnError":
        message = log[-FALLBACK_LOG_LIMIT:]
    return message


def disruption_condition(reason: str, message: str = "") -> dict[str, str]:
    """The DisruptionTarget condition a disrupted pod gets before its termination."""
    assert reason in DISRUPTION_REASONS, f"{reason} is not a DisruptionTarget reason"
    return {
        "type": DISRUPTION_TARGET,
        "status": "True",
        "reason": reason,
        "message": message or DISRUPTION_REASONS[reason],
        "lastTransitionTime": now(),
    }


def image_pull_backoff(image: str) -> dict[str, Any]:
    """The status of a pod whose image this node cannot pull: Pending, its container waiting (the kubelet retries)."""
    message = f'Back-off pulling image "{image}": ErrImagePull: image not known to this node'
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
    return {"phase": "Pending", "containerStatuses": [{"name": CONTAINER_NAME, "state": waiting, "ready": False}]}


async def stop_process(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Process mode's termination: SIGTERM, the grace period, then SIGKILL."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


# --- the image, for process mode ----------------------------------------------------------------------------------


@functools.cache
def image_env() -> dict[str, str]:
    """The final stage's ENV of the cpu image, with its venv replaced by this checkout's."""
    final = DOCKERFILE.read_text().replace("\\\n", " ").rsplit("\nFROM ", 1)[1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = env.get("PATH", "").replace("/opt/venv/bin", venv_bin).replace("$PATH", "/usr/bin:/bin")
    return env


@functools.cache
def image_workdir() -> str:
    final = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    workdirs = re.findall(r"^WORKDIR (\S+)", final, re.M)
    return workdirs[-1] if workdirs else "/"


def reachable_by_others(path: Path) -> bool:
    """Could an unprivileged UID execute this file (every directory above it searchable)?"""
    real = path.resolve()
    for parent in [*real.parents]:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return bool(os.stat(real).st_mode & 0o001)


def hidden_by(targets: list[str]) -> list[Path]:
    """The checkout, venv and interpreter directories that a mount at one of `targets` would hide."""
    needed = sorted({ROOT, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}, key=lambda p: len(p.parts))
    roots: list[Path] = []
    for path in needed:
        if not any(path.is_relative_to(r) for r in roots):
            roots.append(path)
    return [p for p in roots if any(p.is_relative_to(t) for t in targets)]


# --- the kubelet --------------------------------------------------------------------------------------------------


@dataclass
class Container:
    """One pod's container process."""

    pod: str
    job: str
    job_uid: str
    index: int | None
    proc: asyncio.subprocess.Process
    termination: Path
    grace: float
    deleted: bool = False  # the pod object is gone: report nothing more through the API
    exit_code: int | None = None
    reader: asyncio.Task | None = None
    conditions: list[dict[str, str]] = field(default_factory=list)  # what the kubelet added (DisruptionTarget)


@dataclass
class Prepared:
    """A pod's host side: volume sources, its termination log and directory, its hostname and Job hostnames."""

    sources: dict[str, Path]
    tmpfs: dict[str, str]
    termination: Path
    pod_dir: Path
    hostname: str
    hosts: list[str]


class PodOwner(Protocol):
    """Who hears of a pod's end (the Job controller): `count` at once, with no await, then `finished`."""

    def count(self, c: Container, job: dict[str, Any]) -> None: ...

    async def finished(self, c: Container, job: dict[str, Any]) -> None: ...


class Kubelet:
    def __init__(self, cluster: Cluster, claims: dict[str, Path], workdir: Path, mode: str):
        self.mode = mode
        self.cluster = cluster
        self.claims = claims  # PVC claimName -> host directory
        self.workdir = workdir  # per-pod directories (emptyDirs, ConfigMaps, termination logs, hosts)
        self.containers: dict[str, Container] = {}
        self.history: list[dict[str, Any]] = []  # every pod exit: {"pod", "job", "index", "exit_code"}
        self.run_as_image_user = os.geteuid() == 0 and reachable_by_others(Path(sys.executable))
        self.tasks: list[asyncio.Task] = []

    def spawn(self, coro: Any) -> None:
        """Background work (waits, terminations) kept referenced and awaited on exit."""
        self.tasks.append(asyncio.create_task(coro))

    async def close(self) -> None:
        for c in list(self.containers.values()):
            c.deleted = True  # the API server is going away with the test: report nothing more
            await self.terminate(c, grace=2)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def sync(self, pods: set[str]) -> None:
        """A running container whose pod object is gone (kubectl delete pod, the garbage collector) is terminated."""
        for c in list(self.containers.values()):
            if c.exit_code is None and not c.deleted and c.pod not in pods:
                c.deleted = True
                self.spawn(self.terminate(c, c.grace))

    async def run(self, pod: dict[str, Any], job: dict[str, Any], owner: PodOwner) -> bool:
        """Start the pod's container; False when it stays Pending (its image is not on this node)."""
        meta, pod_spec = pod["metadata"], pod["spec"]
        name, ns = meta["name"], meta["namespace"]
        container = pod_spec["containers"][0]
        if self.mode == "container" and engine.image_id(container["image"]) is None:
            await self.cluster.patch("Pod", name, {"status": image_pull_backoff(container["image"])}, sub="status")
            return False
        services = await self.cluster.list("Service", ns)
        env = pod_env(pod_spec, services, await self._env_from(ns, container), container_env(pod, container))
        index = meta.get("annotations", {}).get(INDEX_ANNOTATION)
        hostname = f"{job['metadata']['name']}-{index}" if index is not None else name
        prepared = await self._prepare(ns, name, pod_spec, self.workdir / name, job, hostname)
        if self.mode == "container":
            argv, proc_env = self._container_argv(name, pod_spec, container, prepared, env), None
        else:
            script = self._mount_script(container, prepared)
            argv = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "pod"]
            proc_env = {**image_env(), **env, "HOSTNAME": hostname}
        proc = await asyncio.create_subprocess_exec(
            *argv, env=proc_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        c = Container(
            pod=name,
            job=job["metadata"]["name"],
            job_uid=job["metadata"]["uid"],
            index=int(index) if index is not None else None,
            proc=proc,
            termination=prepared.termination,
            grace=float(pod_spec.get("terminationGracePeriodSeconds", 30)),
        )
        self.containers[name] = c
        self.cluster.logs[name] = ""
        c.reader = asyncio.create_task(self._read(c))
        await self.cluster.patch("Pod", name, {"status": {"phase": "Running", "startTime": now()}}, sub="status")
        self.spawn(self._wait(c, container, job, owner))
        return True

    async def evict(self, pod: str, reason: str = "EvictionByEvictionAPI", grace: float | None = None) -> None:
        """A disruption of a running pod: DisruptionTarget first, then SIGTERM and SIGKILL after the grace period
        (the pod's own unless `grace` overrides it, as a delete's gracePeriodSeconds or a hard eviction's 0 does).
        Through the API (every reason but TerminationByKubelet) the pod object is deleted; the kubelet's own
        eviction leaves it, Failed."""
        c = self.containers[pod]
        assert c.exit_code is None and not c.deleted, f"pod {pod} is not running"
        condition = disruption_condition(reason)
        c.conditions.append(condition)
        current = await self.cluster.get("Pod", pod)
        conditions = [*((current or {}).get("status") or {}).get("conditions", []), condition]
        await self.cluster.patch("Pod", pod, {"status": {"conditions": conditions}}, sub="status")
        if reason != "TerminationByKubelet":
            c.deleted = True
            await self.cluster.delete("Pod", pod)
        await self.terminate(c, c.grace if grace is None else grace)

    async def _env_from(self, ns: str, container: dict[str, Any]) -> dict[str, str]:
        """envFrom: every key of each referenced Secret (base64 `data`, as the API server stores it)."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            assert set(source) == {"secretRef"}, f"the local node does not emulate envFrom {source}"
            secret = await self.cluster.get("Secret", source["secretRef"]["name"], ns)
            assert secret is not None, (
                f"Secret {source['secretRef']['name']} does not exist (CreateContainerConfigError)"
            )
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
        return env

    async def _prepare(
        self, ns: str, pod: str, spec: dict[str, Any], pod_dir: Path, job: dict[str, Any], hostname: str
    ) -> Prepared:
        """The pod's volumes as host directories, its termination log and its hostnames."""
        pod_dir.mkdir(parents=True)
        pod_dir.chmod(0o755)
        sources: dict[str, Path] = {}  # volume name -> host directory
        tmpfs: dict[str, str] = {}  # volume name -> size limit, for emptyDirs with medium: Memory
        for volume in spec.get("volumes", []):
            vname = volume["name"]
            if "persistentVolumeClaim" in volume:
                sources[vname] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
            elif "configMap" in volume:
                cm = await self.cluster.get("ConfigMap", volume["configMap"]["name"], ns)
                assert cm is not None, f"pod {pod}: ConfigMap {volume['configMap']['name']} does not exist"
                target = pod_dir / "volumes" / vname
                target.mkdir(parents=True)
                for key, text in (cm.get("data") or {}).items():
                    (target / key).write_text(text)
                sources[vname] = target
            elif "emptyDir" in volume:
                target = pod_dir / "volumes" / vname
                target.mkdir(parents=True)
                target.chmod(0o777)  # as the kubelet makes them
                sources[vname] = target
                if volume["emptyDir"].get("medium") == "Memory":
                    tmpfs[vname] = str(volume["emptyDir"].get("sizeLimit") or "")
            else:
                raise AssertionError(f"pod {pod}: the local node does not emulate volume {volume}")
        if self.mode == "process":
            for path in sources.values():
                if self.run_as_image_user:
                    os.chown(path, IMAGE_UID, IMAGE_UID)  # like fsGroup: the volumes are the pod user's to write
                path.chmod(0o777 if not self.run_as_image_user else 0o755)
        termination = pod_dir / "termination-log"
        termination.touch()
        termination.chmod(0o666)
        names = [hostname]
        if spec.get("subdomain"):
            completions = int(job["spec"].get("completions") or 1)
            names += [f"{job['metadata']['name']}-{i}.{spec['subdomain']}" for i in range(completions)]
        return Prepared(sources, tmpfs, termination, pod_dir, hostname, names)

    def _subpath(self, prepared: Prepared, mount: dict[str, Any], fs_group: int | None) -> Path:
        """The host directory behind a volumeMount; a missing subPath is created, as the kubelet does."""
        src = prepared.sources[mount["name"]]
        if mount.get("subPath"):
            src = src / mount["subPath"]
            if not src.exists():
                src.mkdir(parents=True)
                if fs_group is not None and not mount.get("readOnly"):
                    os.chown(src, -1, fs_group)  # fsGroup owns the pod's writable volumes (setgid, g+rwx)
                    src.chmod(0o2775)
        return src

    def _container_argv(
        self, name: str, spec: dict[str, Any], container: dict[str, Any], prepared: Prepared, env: dict[str, str]
    ) -> list[str]:
        """`<engine> run` for one pod: its image, user, security context, volumes, env and hostnames."""
        pod_sec, sec = spec.get("securityContext") or {}, container.get("securityContext") or {}
        user, group = sec.get("runAsUser", pod_sec.get("runAsUser")), sec.get("runAsGroup", pod_sec.get("runAsGroup"))
        fs_group = pod_sec.get("fsGroup")
        argv = ["--rm", "--pull", "never", "--name", CONTAINER_PREFIX + name, "--network", "host"]
        argv += ["--hostname", prepared.hostname, *(f"--add-host={h}:127.0.0.1" for h in prepared.hosts)]
        if user is not None:
            argv += ["--user", f"{user}:{group}" if group is not None else str(user)]
        if fs_group is not None:
            argv += ["--group-add", str(fs_group)]
        if sec.get("readOnlyRootFilesystem"):
            argv += ["--read-only", "--read-only-tmpfs=false"] if "podman" in str(engine.engine()) else ["--read-only"]
        if sec.get("allowPrivilegeEscalation") is False:
            argv += ["--security-opt", "no-new-privileges"]
        argv += [f"--cap-drop={c}" for c in (sec.get("capabilities") or {}).get("drop", [])]
        for mount in container.get("volumeMounts", []):
            if mount["name"] in prepared.tmpfs:
                size = prepared.tmpfs[mount["name"]]
                size_opt = f",size={math.ceil(quantity.parse(size))}" if size else ""
                argv += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777{size_opt}"]
                continue
            src = self._subpath(prepared, mount, fs_group)
            argv += ["-v", f"{src}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
        argv += ["-v", f"{prepared.termination}:{TERMINATION_LOG}"]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        if container.get("workingDir"):
            argv += ["--workdir", container["workingDir"]]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        return engine.run_argv(*argv, container["image"], *container.get("args", []))

    def _mount_script(self, container: dict[str, Any], prepared: Prepared) -> str:
        """Process mode: the shell run inside the pod's mount namespace: mounts, then exec of the entrypoint
        (or the container's `command`, which replaces it as it replaces an image's ENTRYPOINT)."""
        hosts = prepared.pod_dir / "hosts"
        hosts.write_text("127.0.0.1 " + " ".join(["localhost", *prepared.hosts]) + "\n")
        lines = ["set -eu", f"hostname {shlex.quote(prepared.hostname)}"]
        late: list[str] = []  # /tmp last: it would hide the sources under /tmp
        for mount in container.get("volumeMounts", []):
            src = self._subpath(prepared, mount, None)
            target = mount["mountPath"]
            cmds = [f"mkdir -p {shlex.quote(target)}", f"mount --bind {shlex.quote(str(src))} {shlex.quote(target)}"]
            if mount.get("readOnly"):
                cmds.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
            (late if target == "/tmp" or target.startswith("/tmp/") else lines).extend(cmds)
        lines += [
            f"touch {TERMINATION_LOG}",
            f"mount --bind {shlex.quote(str(prepared.termination))} {TERMINATION_LOG}",
            f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
        ]
        # The "image" is this checkout and its interpreter. Where they live under a path the pod mounts over
        # (a clone in /tmp), park them on a private tmpfs, mount the pod's volume, and put them back.
        keep = hidden_by([m["mountPath"] for m in container.get("volumeMounts", [])])
        if keep:
            lines.append("mount -t tmpfs kubetune-keep /mnt")
            for i, path in enumerate(keep):
                lines += [f"mkdir -p /mnt/{i}", f"mount --bind {shlex.quote(str(path))} /mnt/{i}"]
        lines += late
        for i, path in enumerate(keep):
            lines += [f"mkdir -p {shlex.quote(str(path))}", f"mount --bind /mnt/{i} {shlex.quote(str(path))}"]
        if (container.get("securityContext") or {}).get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        lines.append(f"cd {shlex.quote(container.get('workingDir') or image_workdir())}")
        command = [*(container.get("command") or [str(ENTRYPOINT)]), *container.get("args", [])]
        if self.run_as_image_user:
            command = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups", *command]
        lines.append("exec " + " ".join(shlex.quote(a) for a in command))
        return "\n".join(lines)

    async def _read(self, c: Container) -> None:
        assert c.proc.stdout is not None
        async for line in c.proc.stdout:
            self.cluster.logs[c.pod] += line.decode("utf-8", "replace")

    async def _wait(self, c: Container, container: dict[str, Any], job: dict[str, Any], owner: PodOwner) -> None:
        code = await c.proc.wait()
        c.exit_code = exit_code(code)
        self.history.append({"pod": c.pod, "job": c.job, "index": c.index, "exit_code": c.exit_code})
        owner.count(c, job)  # before any await: the owner accounts for the exit before anything else can look
        if c.reader:
            await c.reader
        log = self.cluster.logs[c.pod]
        message = termination_message(
            c.termination.read_text(), log, c.exit_code, container.get("terminationMessagePolicy")
        )
        if not c.deleted:
            state = {"terminated": {"exitCode": c.exit_code, "message": message, "finishedAt": now()}}
            status = {
                "phase": "Succeeded" if c.exit_code == 0 else "Failed",
                "containerStatuses": [{"name": container["name"], "state": state}],
            }
            await self.cluster.patch("Pod", c.pod, {"status": status}, sub="status")
        await owner.finished(c, job)

    async def terminate(self, c: Container, grace: float) -> None:
        """What the kubelet does to a pod it stops: SIGTERM, the grace period, then SIGKILL."""
        if c.proc.returncode is not None:
            return
        if self.mode == "container":
            exe = engine.engine()
            assert exe
            # `stop --time N` is the same sequence in the engine: SIGTERM, N seconds, SIGKILL (0: at once).
            argv = [exe, "stop", "--time", str(max(0, round(grace))), CONTAINER_PREFIX + c.pod]
            quiet = asyncio.subprocess.DEVNULL
            stop = await asyncio.create_subprocess_exec(*argv, stdout=quiet, stderr=quiet)
            await stop.wait()
            await c.proc.wait()
            return
        await stop_process(c.proc, grace)
