"""Process layout, backend choice, core pinning and the torchrun command (pure), and what a stopped node exits with."""

import socket

import pytest

from kubetune.trainer.errors import UsageError
from kubetune.trainer.launch import (
    Layout,
    check_port_free,
    choose_backend,
    layout_from_env,
    numa_groups,
    split_cores,
    torchrun_command,
    worker_cpus,
    worker_environment,
    worker_threads,
)


def test_single_process_by_default():
    layout = layout_from_env({})
    assert layout == Layout() and not layout.distributed


def test_layout_from_env_and_indexed_job():
    env = {
        "KUBETUNE_NPROC_PER_NODE": "4",
        "KUBETUNE_NNODES": "2",
        "JOB_COMPLETION_INDEX": "1",
        "MASTER_ADDR": "job-0.svc",
        "MASTER_PORT": "23456",
    }
    layout = layout_from_env(env)
    assert (layout.nproc_per_node, layout.nnodes, layout.node_rank, layout.world_size) == (4, 2, 1, 8)
    assert (layout.master_addr, layout.master_port) == ("job-0.svc", 23456)
    # KUBETUNE_NODE_RANK wins over the Job index; flags win over env.
    assert layout_from_env({**env, "KUBETUNE_NODE_RANK": "0"}).node_rank == 0
    assert layout_from_env(env, nproc=1, nnodes=3).world_size == 3


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_NPROC_PER_NODE": "two"}, "KUBETUNE_NPROC_PER_NODE: expected an integer"),
        ({"KUBETUNE_NNODES": "0"}, "KUBETUNE_NNODES: must be >= 1"),
        ({"KUBETUNE_NNODES": "2", "JOB_COMPLETION_INDEX": "2"}, "node rank 2 is out of range"),
    ],
)
def test_layout_errors(env, message):
    with pytest.raises(UsageError, match=message):
        layout_from_env(env)


def test_backend_table():
    assert choose_backend("cpu", ccl_importable=False) == "gloo"
    assert choose_backend("cpu", ccl_importable=True) == "ccl"
    assert choose_backend("cuda", ccl_importable=True) == "nccl"
    assert choose_backend("xpu", ccl_importable=False) == "xccl"
    assert choose_backend("cpu", ccl_importable=True, requested="gloo") == "gloo"


def test_split_cores_disjoint_equal_blocks():
    cores = [0, 1, 2, 3, 4, 5, 6, 7]
    blocks = [split_cores(cores, 3, r) for r in range(3)]
    assert blocks == [[0, 1], [2, 3], [4, 5]]
    assert split_cores([0, 1], 4, 3) == [1]  # more processes than cores: share, never empty


# A two-socket Xeon as Linux numbers it: each node's cores, then their hyperthread siblings, interleaved.
TWO_SOCKETS = [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]]


def test_on_two_numa_nodes_each_process_gets_cores_of_one_node():
    cores = list(range(16))
    assert [split_cores(cores, 2, r, TWO_SOCKETS) for r in range(2)] == TWO_SOCKETS  # not 0-7 and 8-15
    # four processes: two per node, each a block of its own node's cores
    assert [split_cores(cores, 4, r, TWO_SOCKETS) for r in range(4)] == [
        [0, 1, 2, 3],
        [8, 9, 10, 11],
        [4, 5, 6, 7],
        [12, 13, 14, 15],
    ]
    # three processes do not divide among two nodes: contiguous blocks, as on one node
    assert split_cores(cores, 3, 0, TWO_SOCKETS) == split_cores(cores, 3, 0) == [0, 1, 2, 3, 4]


def test_a_cpuset_that_leaves_out_a_node_is_one_node():
    one = [4, 5, 6, 7]  # a container pinned to part of socket 1
    assert numa_groups(one, TWO_SOCKETS) == [[4, 5, 6, 7]]
    assert [split_cores(one, 2, r, TWO_SOCKETS) for r in range(2)] == [[4, 5], [6, 7]]
    assert numa_groups(list(range(16)), []) == []  # the kernel did not say: no NUMA split


def test_a_worker_with_fewer_threads_than_cores_is_pinned_to_its_whole_block():
    # Two one-process pods on a 2-core host, one thread each: neither is put on core 0 alone (where both would be).
    assert worker_cpus([0, 1], 1, 0, [], usable=2, configured=1) == ([0, 1], 1)
    # A pod with a 8-CPU quota on a 64-core host: 4 threads per process, each free to run anywhere in its half.
    assert worker_cpus(list(range(64)), 2, 1, [], usable=8, configured=None) == (list(range(32, 64)), 4)
    assert worker_cpus(list(range(16)), 2, 1, TWO_SOCKETS, usable=16, configured=None) == (TWO_SOCKETS[1], 8)


def test_nproc_auto_is_one_process_per_numa_node():
    assert layout_from_env({"KUBETUNE_NPROC_PER_NODE": "auto"}, numa_nodes=2).nproc_per_node == 2
    assert layout_from_env({"KUBETUNE_NPROC_PER_NODE": "auto"}, numa_nodes=1).nproc_per_node == 1
    assert layout_from_env({"KUBETUNE_NPROC_PER_NODE": "auto"}, nproc=3, numa_nodes=2).nproc_per_node == 3  # flag wins
    assert layout_from_env({}, numa_nodes=2).nproc_per_node == 1  # not asked for: one process
    with pytest.raises(UsageError, match="KUBETUNE_NPROC_PER_NODE"):
        layout_from_env({"KUBETUNE_NPROC_PER_NODE": "automatic"}, numa_nodes=2)


def test_a_workers_threads_are_its_share_of_the_quota_or_the_config_never_more_than_its_cores():
    node = list(range(64))
    assert worker_threads(len(split_cores(node, 2, 1)), usable=64, local_world=2, configured=None) == 32
    # A pod limited to 8 CPUs on a 64-core node sees all 64 in its affinity: 4 threads per process, not 32.
    assert worker_threads(len(split_cores(node, 2, 1)), usable=8, local_world=2, configured=None) == 4
    # Two pods sharing a node's cores, told one thread each (the two-node flow on a 2-core machine).
    assert worker_threads(2, usable=2, local_world=1, configured=1) == 1
    assert worker_threads(2, usable=2, local_world=1, configured=8) == 2  # never more than its cores
    assert worker_threads(1, usable=1, local_world=4, configured=None) == 1


def test_worker_environment_threads_and_ccl():
    env = worker_environment({"PATH": "/bin"}, Layout(nproc_per_node=2), cores_available=8)
    assert env["OMP_NUM_THREADS"] == "4" and env["CCL_WORKER_COUNT"] == "1" and env["PATH"] == "/bin"
    assert worker_environment({"OMP_NUM_THREADS": "1"}, Layout(nproc_per_node=2), 8)["OMP_NUM_THREADS"] == "1"
    # Layout given by flags reaches the workers.
    env = worker_environment({}, Layout(nproc_per_node=3, nnodes=2, node_rank=1), 6)
    assert (env["KUBETUNE_NPROC_PER_NODE"], env["KUBETUNE_NNODES"], env["KUBETUNE_NODE_RANK"]) == ("3", "2", "1")


def test_torchrun_command_static_rendezvous():
    cmd = torchrun_command(Layout(2, 3, 1, "h0", 1234), ["train", "--config", "c.yaml"], rdzv_timeout=60)
    assert cmd[1:3] == ["-m", "kubetune.trainer.torchrun"]
    for arg in [
        "--nnodes=3",
        "--nproc-per-node=2",
        "--node-rank=1",
        "--master-addr=h0",
        "--master-port=1234",
        "--rdzv-conf=timeout=60",
        "--max-restarts=0",
    ]:
        assert arg in cmd
    assert cmd[-5:] == ["-m", "kubetune.trainer.cli", "train", "--config", "c.yaml"]


def test_busy_port_is_reported_on_node_zero_only():
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UsageError, match=f"MASTER_PORT {port} is already in use"):
            check_port_free(Layout(2, 1, 0, "127.0.0.1", port))
        check_port_free(Layout(2, 2, 1, "127.0.0.1", port))  # other nodes do not host it


def test_a_port_a_stopped_rendezvous_left_in_time_wait_is_free():
    """A suspended job's rank 0 resumes on the same host while the old store's closed connections sit in
    TIME_WAIT on the port: torch's TCPStore binds it (it reuses the address), so the check must too."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end of the connection waits in TIME_WAIT on `port`
        client.recv(1)
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):  # the port is taken for a bind without reuse
        plain.bind(("127.0.0.1", port))
    check_port_free(Layout(2, 1, 0, "127.0.0.1", port))


def test_rendezvous_failure_names_address_and_missing_nodes():
    from kubetune.trainer.launch import rendezvous_failure

    msg = rendezvous_failure(Layout(1, 3, 0, "job-0.svc", 29500), timeout=60)
    assert "job-0.svc:29500" in msg and "expected nodes 1, 2" in msg and "60 s" in msg
    assert "node 2 could not join" in rendezvous_failure(Layout(1, 3, 2, "job-0.svc", 29500), timeout=60)


def test_every_node_of_a_stopped_multi_node_run_exits_preempted(tmp_path):
    # Global rank 0 writes the marker on the shared output claim; before, the first launcher to see it deleted
    # it, so the other node exited 0 and its index counted as complete (issue 21 #3).
    import os
    import sys
    import time

    from kubetune.api.contract import ExitCode
    from kubetune.trainer.launch import PREEMPTED_MARKER, launch

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    (tmp_path / "checkpoints").mkdir()
    marker = tmp_path / "checkpoints" / PREEMPTED_MARKER
    write = [sys.executable, "-c", f"open({str(marker)!r}, 'w').write('7')"]  # rank 0 stopped on a checkpoint
    stopped_too = [sys.executable, "-c", "pass"]  # the other node's workers stopped with it, exit 0

    def node(rank: int, command: list[str]) -> int:
        layout = Layout(nnodes=2, nproc_per_node=1, node_rank=rank, master_addr="127.0.0.1", master_port=free)
        return launch(layout, [], tmp_path, 5, 1, command=command)

    assert node(0, write) == ExitCode.PREEMPTED
    assert node(1, stopped_too) == ExitCode.PREEMPTED
    # A marker of an earlier attempt does not turn this attempt's crash into a retry without end.
    old = time.time() - 3600
    os.utime(marker, (old, old))
    worker_crashes = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(1.5)']); sys.exit(1)"
    )
    assert node(1, [sys.executable, "-c", worker_crashes]) == 1  # (its worker ran: not a rendezvous failure)


# torchrun's stand-in starts its worker a second late, with SIGTERM blocked until the worker's handler is in
# place (as the trainer's GracefulStop would be), so that only the launcher's forwarding is under test.
LATE_WORKER = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(1))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
deadline = time.time() + 20
while not got and time.time() < deadline:
    time.sleep(0.05)
open(sys.argv[1], "w").write("stopped" if got else "never signalled")
"""
LATE_TORCHRUN = """
import signal, subprocess, sys, time
time.sleep(1)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
sys.exit(subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]]).returncode)
"""


def test_a_sigterm_that_arrives_before_the_workers_start_reaches_them_when_they_do(tmp_path):
    # A pod deleted while torchrun is still starting: before, the SIGTERM was forwarded to no one and the workers
    # then trained on until the grace period's SIGKILL.
    import os
    import signal
    import sys
    import threading

    from kubetune.trainer.launch import launch

    seen = tmp_path / "worker"
    command = [sys.executable, "-c", LATE_TORCHRUN, LATE_WORKER, str(seen)]
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert launch(Layout(1, 1, 0, "127.0.0.1", 0), [], tmp_path, 5, 1, command=command) == 0
    assert seen.read_text() == "stopped"
