"""The operator in its own image, against the emulated API server: what the chart's Deployment runs.

The container gets what the chart gives the operator's pod: the image's entrypoint with kopf's flags as
args, a read-only root, UID 10001, no capabilities, and the API server through a kubeconfig (the chart's
in-cluster service account here is a mounted file). It shares the host network with the emulator, so
its liveness and metrics ports are picked free on the host and probed by the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import engine

NAME_PREFIX = "kubetune-e2e-operator-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorPod:
    name: str
    health_port: int
    metrics_port: int
    proc: asyncio.subprocess.Process
    log: str = ""

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/healthz"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


@contextlib.asynccontextmanager
async def operator_container(kubeconfig: Path) -> AsyncIterator[OperatorPod]:
    """Run kubetune/operator against the API server that `kubeconfig` names; stop it (SIGTERM) on exit."""
    exe = engine.engine()
    assert exe, "no container engine"
    kubeconfig.chmod(0o644)  # the image's user reads it
    name = NAME_PREFIX + os.urandom(3).hex()
    health, metrics = free_port(), free_port()
    argv = engine.run_argv(
        "--rm",
        "--pull",
        "never",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "-v",
        f"{kubeconfig}:/var/run/kubeconfig:ro",
        "-e",
        "KUBECONFIG=/var/run/kubeconfig",
        "-e",
        "KUBETUNE_POLL_SECONDS=0.2",
        "-e",
        f"KUBETUNE_METRICS_PORT={metrics}",
        engine.OPERATOR_IMAGE,
        "--standalone",
        f"--liveness=http://127.0.0.1:{health}/healthz",
    )
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    pod = OperatorPod(name, health, metrics, proc)

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            pod.log += line.decode("utf-8", "replace")

    reader = asyncio.create_task(read())
    try:
        yield pod
    finally:
        stop = await asyncio.create_subprocess_exec(
            exe, "stop", "--time", "10", name, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        await stop.wait()
        await proc.wait()
        await reader
