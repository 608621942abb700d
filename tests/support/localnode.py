"""A local node for tests: a kubelet (tests/support/kubelet.py) and a Job controller (tests/support/jobcontroller.py)
played against kmock's API, each module with the Kubernetes rules it encodes.

It sees the Jobs the operator creates, makes their pods, and runs each pod's container in one of two modes,
printed by the tests (`mode()` picks; KTEST_LOCALNODE=container|process forces one, and
KTEST_REQUIRE_IMAGES=1, set by .ci/run, means container):

- container (wherever docker or podman works and the images are built): a real container from the image
  the pod names, with the pod's env and args, its user and fsGroup (a supplementary group), read-only root,
  dropped capabilities and no-new-privileges, every volumeMount (PVC claims and subPaths -> host
  directories, ConfigMaps -> files, emptyDirs -> fresh world-writable directories, Memory emptyDirs ->
  tmpfs), /dev/termination-log as the pod's own file, the pod's hostname, and the Indexed Job's
  `<job>-<i>.<subdomain>` hostnames on the host network (one loopback, like one node's pods with
  hostNetwork). Stopping a pod is `<engine> stop` with its grace period.
- process (the fallback): the image's entrypoint (docker/entrypoint.sh) as a local process with the
  image's ENV (read from docker/Dockerfile.cpu) plus the pod's env, in a private mount namespace with the
  same mounts bind-mounted, /etc/hosts for the hostnames and a read-only root when asked. It needs root
  (or a user namespace) to bind-mount. Stopping a pod sends SIGTERM, then SIGKILL after its grace period.

Either way: pod phases, exit codes, termination messages (FallbackToLogsOnError included), logs (served at
pods/{name}/log) and disruptions (`evict`: DisruptionTarget, SIGTERM, SIGKILL after the grace period) are
reported through the API; Job status (active, succeeded, failed, conditions, suspend) follows the Indexed Job
rules, podFailurePolicy included. What each role does not emulate is in its module's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import engine
from jobcontroller import JobController
from kube import Cluster
from kubelet import Container, Kubelet

MODE_ENV = "KTEST_LOCALNODE"


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


class LocalNode:
    """The node: its kubelet runs the pods its Job controller makes, polled every `poll` seconds."""

    def __init__(self, cluster: Cluster, claims: dict[str, Path], workdir: Path, poll: float = 0.2):
        self.mode = mode()
        self.cluster = cluster
        self.poll = poll
        self.kubelet = Kubelet(cluster, claims, workdir, self.mode)
        self.controller = JobController(cluster, self.kubelet)
        self._task: asyncio.Task | None = None

    @property
    def containers(self) -> dict[str, Container]:
        return self.kubelet.containers

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every pod exit: {"pod", "job", "index", "exit_code"}."""
        return self.kubelet.history

    async def __aenter__(self) -> LocalNode:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.kubelet.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a test fails by its own assertions; keep the node alive and say why
                print(f"localnode: sync failed: {exc!r}", file=sys.stderr)
            await asyncio.sleep(self.poll)

    async def sync(self) -> None:
        """One look at the API: the kubelet stops the pods that are gone, the Job controller syncs every Job."""
        pods = {p["metadata"]["name"] for p in await self.cluster.list("Pod")}
        await self.kubelet.sync(pods)
        for job in await self.cluster.list("Job"):
            await self.controller.sync(job, pods)

    async def evict(self, pod: str, reason: str = "EvictionByEvictionAPI", grace: float | None = None) -> None:
        """Disrupt a running pod (kubelet.Kubelet.evict): DisruptionTarget, SIGTERM, SIGKILL after the grace."""
        await self.kubelet.evict(pod, reason, grace)

    def exits(self, job: str) -> list[int | None]:
        return [h["exit_code"] for h in self.history if h["job"] == job]


def dump(node: LocalNode) -> str:
    """Everything a failing e2e test needs to say what happened."""
    parts = [json.dumps(node.history)]
    for pod, text in node.cluster.logs.items():
        parts.append(f"--- {pod} ---\n{text[-3000:]}")
    return "\n".join(parts)
