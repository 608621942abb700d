"""Several processes and several nodes: `kubetune train` starts torchrun itself.

The layout is deployment, not the run's config, so it comes from the
environment (what a container or an Indexed Job provides) or flags:

    KUBETUNE_NPROC_PER_NODE  processes in this pod/container        (default 1; `auto`: one per NUMA node)
    KUBETUNE_NNODES          pods/machines                          (default 1)
    KUBETUNE_NODE_RANK       this node's index; else JOB_COMPLETION_INDEX (Indexed Job); else 0
    MASTER_ADDR, MASTER_PORT node 0's address and port              (127.0.0.1, 29500)

A single process stays a plain process. Otherwise this process becomes the
launcher: it checks what it can up front (a busy port fails in a second, not
after a rendezvous timeout), then runs torchrun with a static rendezvous, and
forwards SIGTERM straight to the workers so they checkpoint together (torchrun's
own handling would SIGKILL them 30 s later, mid-step for a large model).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kubetune.api import contract
from kubetune.trainer.errors import UsageError

PREEMPTED_MARKER = "PREEMPTED"  # written by rank 0 into checkpoints/ when it stopped on SIGTERM
LAUNCHED_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every worker
INDEXED_JOB_ENV = contract.ENV_JOB_COMPLETION_INDEX  # set by a Kubernetes Indexed Job in each pod


@dataclass(frozen=True)
class Layout:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")  # torchrun sets these in its workers
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$")


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    from kubetune.api.sources import env_number

    try:
        return env_number(environ, name, default, int, minimum)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


AUTO = "auto"


def _nproc(environ: Mapping[str, str], numa_nodes: int) -> int:
    """KUBETUNE_NPROC_PER_NODE: a count, or `auto`: one process per NUMA node (on a two-socket Xeon, a process
    per socket, each with its cores and so, by first touch, its memory on its own node)."""
    if environ.get(contract.ENV_NPROC_PER_NODE, "").strip().lower() == AUTO:
        return max(1, numa_nodes)
    return _int(environ, contract.ENV_NPROC_PER_NODE, 1, 1)


def _flag(value: int | None, name: str, fallback: int) -> int:
    if value is None:
        return fallback
    if value < 1:
        raise UsageError(f"--{name}: must be >= 1, got {value}")
    return value


def _master_addr(environ: Mapping[str, str]) -> str:
    """A host name or IP address; `host:port` and URLs are common mistakes that would only time out later."""
    addr = (environ.get(contract.ENV_MASTER_ADDR) or "127.0.0.1").strip()
    try:
        ipaddress.ip_address(addr.strip("[]"))
        return addr
    except ValueError:
        pass
    if not _HOST.match(addr) or len(addr) > 253:
        raise UsageError(
            f"env MASTER_ADDR: {addr!r} is not a host name or IP address (give the port in MASTER_PORT, no scheme)"
        )
    return addr


def layout_from_env(
    environ: Mapping[str, str], nproc: int | None = None, nnodes: int | None = None, numa_nodes: int = 1
) -> Layout:
    """The process layout from env vars (flags win); raises UsageError naming the variable that is wrong.
    `numa_nodes`: how many NUMA nodes this process may run on, which KUBETUNE_NPROC_PER_NODE=auto uses. Pure."""
    if not environ.get(LAUNCHED_ENV):
        stray = [v for v in TORCHRUN_VARS if environ.get(v)]
        if stray:
            raise UsageError(
                f"env {', '.join(stray)}: set outside torchrun; unset them and use KUBETUNE_NNODES, "
                "KUBETUNE_NPROC_PER_NODE and KUBETUNE_NODE_RANK (kubetune starts torchrun itself)"
            )
    n_nodes = _flag(nnodes, "nnodes", 0) or _int(environ, contract.ENV_NNODES, 1, 1)
    n_proc = _flag(nproc, "nproc-per-node", 0) or _nproc(environ, numa_nodes)
    rank_var = contract.ENV_NODE_RANK if environ.get(contract.ENV_NODE_RANK) else INDEXED_JOB_ENV
    node_rank = _int(environ, rank_var, 0, 0)
    if node_rank >= n_nodes:
        raise UsageError(f"env {rank_var}: node rank {node_rank} is out of range for KUBETUNE_NNODES={n_nodes}")
    port = _int(environ, contract.ENV_MASTER_PORT, 29500, 1)
    if port > 65535:
        raise UsageError(f"env MASTER_PORT: must be <= 65535, got {port}")
    return Layout(n_proc, n_nodes, node_rank, _master_addr(environ), port)


def choose_backend(device: str, ccl_importable: bool, requested: str = "auto") -> str:
    """The collective backend: ccl on CPU when oneCCL's bindings import, else gloo; xccl on XPU; nccl on CUDA."""
    if requested != "auto":
        return requested
    if device == "cuda":
        return "nccl"
    if device == "xpu":
        return "xccl"
    return "ccl" if ccl_importable else "gloo"


def ccl_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None


def numa_groups(cores: list[int], nodes: list[list[int]]) -> list[list[int]]:
    """The usable cores of each NUMA node that has any (a cpuset may leave whole nodes out). Pure."""
    usable = set(cores)
    return [g for g in (sorted(usable & set(n)) for n in nodes) if g]


def split_cores(cores: list[int], local_world: int, local_rank: int, nodes: list[list[int]] | None = None) -> list[int]:
    """This process's share of the usable cores. When the processes divide evenly among the NUMA nodes
    (`nodes`: each node's CPUs), a share of its own node's cores, so that its memory stays local; otherwise, or
    on one node, contiguous equal blocks of all of them (the remainder is left idle). Pure."""
    groups = numa_groups(cores, nodes or [])
    if len(groups) > 1 and local_world % len(groups) == 0:
        per_node = local_world // len(groups)
        return split_cores(groups[local_rank // per_node], per_node, local_rank % per_node)
    per = max(1, len(cores) // local_world)
    start = min(local_rank * per, max(0, len(cores) - per))
    return sorted(cores)[start : start + per]


def worker_threads(cores: int, usable: int, local_world: int, configured: int | None) -> int:
    """Threads of one of `local_world` processes on a node: `training.num_threads` when set, else its share of
    the cores the node may use (a cgroup CPU quota counts, not only the affinity), and never more than the
    `cores` it may run on (its pinned block, or the usable cores unpinned). Two launchers sharing 2 cores
    trained at 69 tokens/s with two threads each, 101 with one each (SmolLM2, batch 2 x 64). Pure."""
    share = configured or max(1, usable // local_world)
    return max(1, min(cores, share))


def worker_cpus(
    cores: list[int], local_world: int, local_rank: int, nodes: list[list[int]], usable: int, configured: int | None
) -> tuple[list[int], int]:
    """The cores a worker is pinned to and its thread count: its whole block, with fewer threads than cores when
    a quota or `training.num_threads` says so. Never the block's first `threads` cores: a pod under a CPU quota
    sees every core of the host, and two such pods would both be put on core 0 while the others idle. Pure."""
    block = split_cores(cores, local_world, local_rank, nodes)
    return block, worker_threads(len(block), usable, local_world, configured)


def worker_environment(environ: Mapping[str, str], layout: Layout, cores_available: int) -> dict[str, str]:
    """Environment for torchrun's workers: threads per process and oneCCL's knobs. Pure."""
    env = dict(environ)
    # The workers check the world size against the layout the launcher used, flags included.
    env[contract.ENV_NPROC_PER_NODE] = str(layout.nproc_per_node)
    env[contract.ENV_NNODES] = str(layout.nnodes)
    env[contract.ENV_NODE_RANK] = str(layout.node_rank)
    threads = worker_threads(cores_available, cores_available, layout.nproc_per_node, None)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("CCL_WORKER_COUNT", "1")  # one oneCCL progress thread per process (used only with ccl)
    return env


def torchrun_command(layout: Layout, argv: list[str], rdzv_timeout: int) -> list[str]:
    """torchrun with a static rendezvous at MASTER_ADDR:MASTER_PORT (see torchrun.py). Pure."""
    return [
        sys.executable,
        "-m",
        "kubetune.trainer.torchrun",  # torchrun that keeps a worker's exit code
        f"--nnodes={layout.nnodes}",
        f"--nproc-per-node={layout.nproc_per_node}",
        f"--node-rank={layout.node_rank}",
        f"--master-addr={layout.master_addr}",
        f"--master-port={layout.master_port}",
        f"--rdzv-conf=timeout={rdzv_timeout}",
        "--max-restarts=0",
        "-m",
        "kubetune.trainer.cli",
        *argv,
    ]


def check_port_free(layout: Layout) -> None:
    """Node 0 hosts the rendezvous; a busy port would otherwise show up as a confusing timeout.

    Busy means another listener. The bind reuses the address as torch's TCPStore does, so the connections a
    stopped launcher's store closed (TIME_WAIT for a minute, a resumed rank 0 on the same host) do not count.
    """
    if layout.node_rank != 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", layout.master_port))
        except OSError:
            raise UsageError(
                f"MASTER_PORT {layout.master_port} is already in use on this node (node 0 hosts the rendezvous); "
                "pick another port"
            ) from None


def rendezvous_failure(layout: Layout, timeout: int) -> str:
    """What to say when torchrun gave up before starting any worker. Pure."""
    where = f"{layout.master_addr}:{layout.master_port}"
    if layout.node_rank == 0:
        missing = ", ".join(str(r) for r in range(1, layout.nnodes))
        return (
            f"rendezvous at {where} timed out after {timeout} s: node(s) never joined (expected nodes {missing} "
            f"besides this node 0; KUBETUNE_NNODES={layout.nnodes}). Check that every node started with the same "
            "KUBETUNE_NNODES and that MASTER_ADDR/MASTER_PORT reach node 0"
        )
    return (
        f"node {layout.node_rank} could not join the rendezvous at {where} (hosted by node 0) within {timeout} s: "
        "node(s) never joined. Check that node 0 is running and that MASTER_ADDR/MASTER_PORT reach it"
    )


def _worker_pids(parent: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(parent).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def preempted(marker: Path, started: float, signalled: bool) -> bool:
    """Whether this node's run stopped on a checkpoint (exit 75, retried) rather than finished.

    Global rank 0 writes the marker on the shared output claim when the workers stop together; every node's
    launcher must see it, so none deletes it (rank 0's next run does, train.py). A marker left by an earlier
    attempt counts only when this node was signalled itself: otherwise its mtime must be of this attempt."""
    try:
        written = marker.stat().st_mtime
    except FileNotFoundError:
        return False
    return signalled or written >= started - MARKER_CLOCK_SLACK_S


MARKER_CLOCK_SLACK_S = 5.0  # the shared volume's clock against this node's


def launch(
    layout: Layout,
    argv: list[str],
    output_dir: Path,
    rdzv_timeout: int,
    cores: int,
    command: list[str] | None = None,
) -> int:
    """Run torchrun (or `command`, for tests); returns the exit code `kubetune train` should exit with."""
    check_port_free(layout)
    marker = output_dir / "checkpoints" / PREEMPTED_MARKER
    if layout.nnodes == 1:
        marker.unlink(missing_ok=True)  # several nodes: another node may still have to read this attempt's
    started = time.time()
    signalled: set[int] = set()  # the workers a SIGTERM was forwarded to
    pending = False  # a SIGTERM arrived

    def forward(_signum: int, _frame: object) -> None:
        # Straight to the workers: they finish the step, checkpoint together, and exit cleanly. One that torchrun
        # had not started yet gets it when it appears (the poll below), so an early SIGTERM is not lost.
        nonlocal pending
        pending = True
        for pid in set(_worker_pids(proc.pid) if proc else []) - signalled:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            signalled.add(pid)

    proc: subprocess.Popen | None = None
    previous = signal.signal(signal.SIGTERM, forward)  # (a terminal's Ctrl-C reaches the workers directly)
    workers_started = False
    try:
        proc = subprocess.Popen(
            command or torchrun_command(layout, argv, rdzv_timeout), env=worker_environment(os.environ, layout, cores)
        )
        while (code := proc.poll()) is None:
            workers = _worker_pids(proc.pid)
            workers_started = workers_started or bool(workers)
            if pending:  # a worker torchrun started since the SIGTERM gets it too
                forward(signal.SIGTERM, None)
            time.sleep(0.5)
    finally:
        # The caller's handler (the CLI's: a SIGTERM from here on is too late to stop anything).
        signal.signal(signal.SIGTERM, previous)
    if code != 0 and not workers_started and layout.nnodes > 1:
        raise UsageError(rendezvous_failure(layout, rdzv_timeout))
    if preempted(marker, started, pending):
        from kubetune.api.contract import ExitCode

        if layout.nnodes == 1:
            marker.unlink(missing_ok=True)
        return ExitCode.PREEMPTED
    return code
