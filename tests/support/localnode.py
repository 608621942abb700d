"""A local node for tests: the kubelet and the Job controller, played against kmock's API.

It sees the Jobs the operator creates, makes their pods, and runs each pod's container in one of two modes,
printed by the tests (`mode()` picks; KTEST_LOCALNODE=container|process forces one, and
KTEST_REQUIRE_IMAGES=1, set by .ci/run, means container):

- container (wherever docker or podman works and the images are built): a real container from the image
  the pod names, with the pod's env and args, its user and fsGroup (a supplementary group), read-only root,
  dropped capabilities and no-new-privileges, every volumeMount (PVC claims and subPaths -> host
  directories, ConfigMaps -> files, emptyDirs -> fresh world-writable directories, Memory emptyDirs ->
  tmpfs), /dev/termination-log as the pod's own file, the pod's hostname, and the Indexed Job's
  `<job>-<i>.<subdomain>` hostnames on the host network (one loopback, like one node's pods with
  hostNetwork). Deleting a pod is `<engine> stop` with its grace period.
- process (the fallback): the image's entrypoint (docker/entrypoint.sh) as a local process with the
  image's ENV (read from docker/Dockerfile.cpu) plus the pod's env, in a private mount namespace with the
  same mounts bind-mounted, /etc/hosts for the hostnames and a read-only root when asked. It needs root
  (or a user namespace) to bind-mount. Deleting a pod sends SIGTERM, then SIGKILL after its grace period.

Either way: pod phases, exit codes, termination messages (FallbackToLogsOnError included) and logs
(served at pods/{name}/log) are reported through the API; Job status (active, succeeded, failed,
conditions, suspend) follows the Indexed Job rules, podFailurePolicy's Ignore rules included; deleting a
Job deletes its pods.

Secrets reach containers through envFrom (secretRef: every key of the Secret's data as a variable); the
namespace's Services through the kubelet's service-link variables unless the pod sets enableServiceLinks: false.
What it does not emulate: scheduling, image pulls (container mode runs local images only: `--pull never`; a pod
whose image is not on this node stays Pending in ImagePullBackOff, as the kubelet reports it),
networking beyond one host's loopback, resource requests and limits, secret volumes, pod restarts by the
kubelet (restartPolicy is Never for every pod the operator renders), the Job controller's backoff delay
between retries, and a Job's own activeDeadlineSeconds (the operator enforces the deadline).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import engine
import kubelet
from kube import Cluster

from kubetune.api.contract import IMAGE_UID
from kubetune.operator.observed import CONTROLLER_UID_LABEL, INDEX_LABEL
from kubetune.operator.render import CONTAINER as CONTAINER_NAME

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile.cpu"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


MODE_ENV = "KTEST_LOCALNODE"
CONTAINER_PREFIX = "kubetune-e2e-"  # container names: several test sessions may share one engine


@functools.cache
def mode() -> str:
    """'container' where the engine works and the images are built, else 'process' (or what MODE_ENV forces)."""
    forced = os.environ.get(MODE_ENV) or ("container" if os.environ.get(engine.REQUIRE_ENV) == "1" else None)
    if forced == "container":
        reason = engine.unavailable(engine.TRAINER_IMAGE)
        assert reason is None, f"{MODE_ENV}=container, but {reason}"
        return "container"
    if forced == "process" or engine.unavailable(engine.TRAINER_IMAGE):
        return "process"
    return "container"


def mode_line() -> str:
    """What the test output says about how pods ran."""
    if mode() == "container":
        image = engine.TRAINER_IMAGE
        return f"local node: pods run as containers ({engine.engine()}, {image} {engine.image_id(image)})"
    forced = os.environ.get(MODE_ENV) == "process"
    why = f"{MODE_ENV}=process" if forced else engine.unavailable(engine.TRAINER_IMAGE)
    return f"local node: pods run as host processes ({why})"


def available() -> str | None:
    """None when pods can run here, else the reason they cannot."""
    if mode() == "container":
        return None
    if sys.platform != "linux" or not shutil.which("unshare"):
        return "the local node needs Linux mount namespaces (unshare)"
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount --bind /tmp /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot bind-mount in a private mount namespace here (needs root): {probe.stderr.strip()}"
    return None


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


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


@dataclass
class Prepared:
    """A pod's host side: volume sources, its termination log and directory, its hostname and Job hostnames."""

    sources: dict[str, Path]
    tmpfs: dict[str, str]
    termination: Path
    pod_dir: Path
    hostname: str
    hosts: list[str]


@dataclass
class JobState:
    failed: int = 0
    fail_job: str | None = None  # the message of a matching FailJob rule
    succeeded: set[int] = field(default_factory=set)
    finished: bool = False
    started: str | None = None


class LocalNode:
    def __init__(self, cluster: Cluster, claims: dict[str, Path], workdir: Path, poll: float = 0.2):
        self.mode = mode()
        self.cluster = cluster
        self.claims = claims  # PVC claimName -> host directory
        self.workdir = workdir  # per-pod directories (emptyDirs, ConfigMaps, termination logs, hosts)
        self.poll = poll
        self.containers: dict[str, Container] = {}
        self.jobs: dict[str, JobState] = {}
        self.history: list[dict[str, Any]] = []  # every pod exit: {"pod", "job", "index", "exit_code"}
        self.run_as_image_user = os.geteuid() == 0 and reachable_by_others(Path(sys.executable))
        self._task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> LocalNode:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for c in list(self.containers.values()):
            c.deleted = True  # the API server is going away with the test: report nothing more
            await self._terminate(c, grace=2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        """Background work (waits, terminations) kept referenced and awaited on exit."""
        self._tasks.append(asyncio.create_task(coro))

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a test fails by its own assertions; keep the node alive and say why
                print(f"localnode: sync failed: {exc!r}", file=sys.stderr)
            await asyncio.sleep(self.poll)

    # --- the Job controller ---------------------------------------------------------------------

    async def sync(self) -> None:
        jobs = {j["metadata"]["name"]: j for j in await self.cluster.list("Job")}
        pods = {p["metadata"]["name"] for p in await self.cluster.list("Pod")}
        for c in list(self.containers.values()):
            if c.exit_code is None and not c.deleted and (c.pod not in pods or c.job not in jobs):
                # Pod deleted (kubectl delete pod, eviction) or its Job deleted (garbage collection).
                c.deleted = True
                if c.pod in pods:
                    await self.cluster.delete("Pod", c.pod)
                self._spawn(self._terminate(c, c.grace))
        for job in jobs.values():
            await self.sync_job(job)

    async def sync_job(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        state = self.jobs.setdefault(meta["uid"], JobState())
        if state.finished or state.fail_job is not None or state.failed > int(spec.get("backoffLimit", 6)):
            return  # finished, or failing: _on_exit is writing the Failed condition; no replacement pod
        active = [c for c in self.containers.values() if c.job_uid == meta["uid"] and c.exit_code is None]
        status: dict[str, Any] = {}
        conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c["type"] != "Suspended"]
        if spec.get("suspend"):
            current = job.get("status") or {}
            already = any(c["type"] == "Suspended" for c in current.get("conditions") or [])
            if already and not active and current.get("active") == 0:
                return
            for c in active:
                if not c.deleted:
                    c.deleted = True
                    await self.cluster.delete("Pod", c.pod)
                    self._spawn(self._terminate(c, c.grace))
            status = {"active": 0, "conditions": [*conditions, _cond("Suspended", "JobSuspended")]}
            await self._job_status(meta["name"], status, job)
            return
        completions = int(spec.get("completions") or 1)
        indexed = spec.get("completionMode") == "Indexed"
        running = {c.index or 0 for c in active}  # a non-indexed Job's single pod counts as index 0
        for index in range(completions):
            if index in state.succeeded or index in running:
                continue
            await self.start_pod(job, index if indexed else None)
        state.started = state.started or now()
        active_count = len([c for c in self.containers.values() if c.job_uid == meta["uid"] and c.exit_code is None])
        status = {"active": active_count, "startTime": state.started, "conditions": conditions}
        await self._job_status(meta["name"], status, job)

    async def _job_status(self, name: str, status: dict[str, Any], job: dict[str, Any]) -> None:
        current = job.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            await self.cluster.patch("Job", name, {"status": status}, sub="status")

    def _count(self, c: Container, job: dict[str, Any]) -> None:
        """Account for an exit before anything else can look (no await): no index runs twice."""
        state = self.jobs[c.job_uid]
        self.history.append({"pod": c.pod, "job": c.job, "index": c.index, "exit_code": c.exit_code})
        if c.exit_code == 0:
            state.succeeded.add(c.index or 0)
            return
        action = _rule_action(job, c.exit_code)
        if action != "Ignore":
            state.failed += 1
        if action == "FailJob" and state.fail_job is None:
            state.fail_job = (
                f"Container trainer for pod {c.pod} failed with exit code {c.exit_code} matching FailJob rule"
            )

    async def _on_exit(self, c: Container, job: dict[str, Any]) -> None:
        state = self.jobs[c.job_uid]
        if state.finished:
            return
        job = await self.cluster.get("Job", c.job) or job
        spec = job["spec"]
        completions = int(spec.get("completions") or 1)
        conditions = list((job.get("status") or {}).get("conditions") or [])
        status: dict[str, Any] = {
            "succeeded": len(state.succeeded),
            "failed": state.failed,
            "completedIndexes": ",".join(str(i) for i in sorted(state.succeeded)),
        }
        if len(state.succeeded) == completions:
            state.finished = True
            status |= {"active": 0, "completionTime": now(), "conditions": [*conditions, _cond("Complete", "")]}
        elif state.fail_job or state.failed > int(spec.get("backoffLimit", 6)):
            state.finished = True
            # The Job controller's reasons: a FailJob rule wins over counting (podFailurePolicy docs).
            reason = "PodFailurePolicy" if state.fail_job else "BackoffLimitExceeded"
            message = state.fail_job or "Job has reached the specified backoff limit"
            status |= {"active": 0, "conditions": [*conditions, _cond("Failed", reason, message)]}
            for other in self.containers.values():
                if other.job_uid == c.job_uid and other.exit_code is None:
                    self._spawn(self._terminate(other, other.grace))
        await self.cluster.patch("Job", c.job, {"status": status}, sub="status")

    # --- the kubelet ----------------------------------------------------------------------------

    async def start_pod(self, job: dict[str, Any], index: int | None) -> None:
        meta, template = job["metadata"], job["spec"]["template"]
        suffix = uuid.uuid4().hex[:5]
        name = f"{meta['name']}-{index}-{suffix}" if index is not None else f"{meta['name']}-{suffix}"
        labels = {
            **(template["metadata"].get("labels") or {}),
            **{"job-name": meta["name"], "batch.kubernetes.io/job-name": meta["name"]},
            **{CONTROLLER_UID_LABEL: meta["uid"], "controller-uid": meta["uid"]},  # as the Job controller does
        }
        if index is not None:
            labels[INDEX_LABEL] = str(index)
        pod_spec = template["spec"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": {INDEX_LABEL: str(index)} if index is not None else {},
                "creationTimestamp": now(),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": pod_spec,
            "status": {"phase": "Pending"},
        }
        await self.cluster.create(pod)
        container = pod_spec["containers"][0]
        if self.mode == "container" and engine.image_id(container["image"]) is None:
            await self._cannot_pull(name, container["image"])  # the kubelet retries; the pod stays Pending
            return
        services = await self.cluster.list("Service", meta["namespace"])
        env = kubelet.pod_env(
            pod_spec, services, await self._env_from(meta["namespace"], container), _plain_env(container)
        )
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        hostname = f"{meta['name']}-{index}" if index is not None else name
        pod_dir = self.workdir / name
        prepared = await self._prepare(meta["namespace"], name, pod_spec, pod_dir, job, hostname)
        if self.mode == "container":
            argv = self._container_argv(name, pod_spec, container, prepared, env)
            proc_env = None
        else:
            script = self._mount_script(container, prepared)
            argv = ["unshare", "--mount", "--uts", "--propagation", "private", "sh", "-c", script, "pod"]
            proc_env = {**image_env(), **env, "HOSTNAME": hostname}
        proc = await asyncio.create_subprocess_exec(
            *argv, env=proc_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        c = Container(
            pod=name,
            job=meta["name"],
            job_uid=meta["uid"],
            index=index,
            proc=proc,
            termination=prepared.termination,
            grace=float(pod_spec.get("terminationGracePeriodSeconds", 30)),
        )
        self.containers[name] = c
        self.cluster.logs[name] = ""
        c.reader = asyncio.create_task(self._read(c))
        await self.cluster.patch("Pod", name, {"status": {"phase": "Running", "startTime": now()}}, sub="status")
        self._spawn(self._wait(c, container, job))

    async def _cannot_pull(self, pod: str, image: str) -> None:
        """What the kubelet reports for an image it cannot pull (`--pull never`: one not on this node)."""
        message = f'Back-off pulling image "{image}": ErrImagePull: image not known to this node'
        waiting = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
        status = {"phase": "Pending", "containerStatuses": [{"name": CONTAINER_NAME, "state": waiting, "ready": False}]}
        await self.cluster.patch("Pod", pod, {"status": status}, sub="status")

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
                argv += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777" + (f",size={_bytes(size)}" if size else "")]
                continue
            src = self._subpath(prepared, mount, fs_group)
            argv += ["-v", f"{src}:{mount['mountPath']}" + (":ro" if mount.get("readOnly") else "")]
        argv += ["-v", f"{prepared.termination}:/dev/termination-log"]
        for key, value in env.items():
            argv += ["-e", f"{key}={value}"]
        if container.get("workingDir"):
            argv += ["--workdir", container["workingDir"]]
        if container.get("command"):
            argv += ["--entrypoint", json.dumps(container["command"])]
        return engine.run_argv(*argv, container["image"], *container.get("args", []))

    def _mount_script(self, container: dict[str, Any], prepared: Prepared) -> str:
        """Process mode: the shell run inside the pod's mount namespace: mounts, then exec of the entrypoint."""
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
            "touch /dev/termination-log",
            f"mount --bind {shlex.quote(str(prepared.termination))} /dev/termination-log",
            f"mount --bind {shlex.quote(str(hosts))} /etc/hosts",
        ]
        # The "image" is this checkout and its interpreter. Where they live under a path the pod mounts over
        # (a clone in /tmp), park them on a private tmpfs, mount the pod's volume, and put them back.
        targets = [m["mountPath"] for m in container.get("volumeMounts", [])]
        keep = hidden_by(targets)
        if keep:
            lines.append("mount -t tmpfs kubetune-keep /mnt")
            for i, path in enumerate(keep):
                lines += [f"mkdir -p /mnt/{i}", f"mount --bind {shlex.quote(str(path))} /mnt/{i}"]
        lines += late
        for i, path in enumerate(keep):
            lines += [f"mkdir -p {shlex.quote(str(path))}", f"mount --bind /mnt/{i} {shlex.quote(str(path))}"]
        security = container.get("securityContext") or {}
        if security.get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
        lines.append(f"cd {shlex.quote(container.get('workingDir') or image_workdir())}")
        command = [str(ENTRYPOINT), *container.get("args", [])]
        if self.run_as_image_user:
            command = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}", "--clear-groups", *command]
        lines.append("exec " + " ".join(shlex.quote(a) for a in command))
        return "\n".join(lines)

    async def _read(self, c: Container) -> None:
        assert c.proc.stdout is not None
        async for line in c.proc.stdout:
            self.cluster.logs[c.pod] += line.decode("utf-8", "replace")

    async def _wait(self, c: Container, container: dict[str, Any], job: dict[str, Any]) -> None:
        code = await c.proc.wait()
        c.exit_code = code if code >= 0 else 128 - code  # killed by a signal: 128 + signal, as a runtime reports
        self._count(c, job)
        if c.reader:
            await c.reader
        message = c.termination.read_text()[:4096]
        if not message and code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self.cluster.logs[c.pod][-2048:]
        if not c.deleted:
            state = {"terminated": {"exitCode": c.exit_code, "message": message, "finishedAt": now()}}
            status = {
                "phase": "Succeeded" if c.exit_code == 0 else "Failed",
                "containerStatuses": [{"name": container["name"], "state": state}],
            }
            await self.cluster.patch("Pod", c.pod, {"status": status}, sub="status")
        await self._on_exit(c, job)

    async def _terminate(self, c: Container, grace: float) -> None:
        """What the kubelet does to a deleted pod: SIGTERM, the grace period, then SIGKILL."""
        if c.proc.returncode is not None:
            return
        if self.mode == "container":
            exe = engine.engine()
            assert exe
            argv = [exe, "stop", "--time", str(max(1, round(grace))), CONTAINER_PREFIX + c.pod]
            quiet = asyncio.subprocess.DEVNULL
            stop = await asyncio.create_subprocess_exec(*argv, stdout=quiet, stderr=quiet)
            await stop.wait()
            await c.proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            c.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(c.proc.wait(), timeout=grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                c.proc.kill()

    def exits(self, job: str) -> list[int | None]:
        return [h["exit_code"] for h in self.history if h["job"] == job]


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's `env` with literal values; valueFrom is not emulated (the operator renders none)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity ("2Gi", "512M", "1000") in bytes, for a tmpfs size."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


def _rule_action(job: dict[str, Any], exit_code: int | None) -> str | None:
    """podFailurePolicy: the action of the first onExitCodes rule matching this exit code, as the controller
    evaluates them in order (Ignore: the failure does not count; FailJob: the Job fails at once)."""
    for rule in ((job["spec"].get("podFailurePolicy") or {}).get("rules")) or []:
        codes = rule.get("onExitCodes")
        if codes and codes.get("operator") == "In" and exit_code in codes["values"]:
            return rule.get("action")
    return None


def _cond(type_: str, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}


def dump(node: LocalNode) -> str:
    """Everything a failing e2e test needs to say what happened."""
    parts = [json.dumps(node.history)]
    for pod, text in node.cluster.logs.items():
        parts.append(f"--- {pod} ---\n{text[-3000:]}")
    return "\n".join(parts)
