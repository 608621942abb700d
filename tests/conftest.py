"""Shared fixtures and the suite's tiers.

Tiers follow the directories (kopf's layout): every test gets one of the markers `unit`,
`integration` (the operator against the emulated API server) or `e2e` (the whole flow on a local
node, or a real cluster). Unit tests run under a per-test timeout so a hang fails fast instead of
eating CI's budget; `slow` tests train the real model and have none. End-to-end tests run only
with `--with-e2e` (`make test` passes it), so `pytest` on a laptop stays minutes, not a quarter hour.
The builtin model is exported once per machine into KUBETUNE_CACHE_DIR (~25 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import cores
import pytest

pytest_plugins = ["kube"]  # tests/support/kube.py: the emulated API server and the operator runner

TESTS = Path(__file__).parent
# Directory -> tier; anything elsewhere is a unit test. Below a tier's directory the layout mirrors the
# packages (tests/integration/operator is the operator's, as tests/operator is for its unit tests).
TIERS = {
    "integration": "integration",  # the operator (kopf included) against the emulated API server
    "e2e_local": "e2e",  # the whole flow on a local node whose pods are podman containers
    "e2e": "e2e",  # a real (kind) cluster
    "install": "e2e",  # fresh venvs with pip installs of the distributions (docs/user/install.md): minutes
}
UNIT_TIMEOUT_S = 120  # generous for 2 loaded cores; a unit test needing more is a slow test or a hang


# `make test` runs two xdist workers, each whole modules (their module fixtures once). xdist starts the modules with
# the most tests first; these take a minute or more each, so they go first and the workers end together.
LONGEST_FIRST = (
    "trainer/test_demo.py",
    "install/test_user_install.py",
    "e2e_local/test_flow.py",
    "trainer/test_distributed.py",
    "docker/test_images.py",
    "trainer/test_export.py",
    "trainer/test_precision.py",
    "trainer/test_plan_merge.py",
)


def tier_of(path: Path) -> str:
    top = path.resolve().relative_to(TESTS).parts[0]
    return TIERS.get(top, "unit")


def pytest_configure(config: pytest.Config) -> None:
    pin_worker()


def pin_worker() -> None:
    """Under `pytest -n N` give each worker its own share of the cores, inherited by everything it starts.

    Unpinned, two workers' trainings ran four threads on two cores and every step took 2-5x longer (a signal
    test timed out); pinned, each worker is a smaller machine, and the trainer sizes its threads from the
    affinity it sees (device.usable_cores).
    """
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    cpus = cores.run_cpus()
    if not worker or len(cpus) < workers:
        return
    index = int(worker.removeprefix("gw"))
    os.environ[cores.ENV] = ",".join(map(str, cpus))
    os.sched_setaffinity(0, cpus[index * len(cpus) // workers : (index + 1) * len(cpus) // workers])


@pytest.hookimpl(optionalhook=True)  # xdist's hook: plain `pytest` runs without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole modules per worker (`--dist loadfile`), LONGEST_FIRST ahead of the rest."""
    from xdist.scheduler import LoadFileScheduling

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            for name in reversed(LONGEST_FIRST):
                if f"tests/{name}" in self.workqueue:
                    self.workqueue.move_to_end(f"tests/{name}", last=False)
            super()._assign_work_unit(node)

    return LongestFirst(config, log)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--with-e2e", action="store_true", help="also run the end-to-end tier (minutes)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_e2e = pytest.mark.skip(reason="end-to-end tier: run with --with-e2e (make test does)")
    for item in items:
        tier = tier_of(Path(item.fspath))
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "e2e" and not config.getoption("--with-e2e"):
            item.add_marker(skip_e2e)
        elif tier == "unit" and "slow" not in item.keywords and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


@pytest.fixture(scope="session")
def tokenizer():
    from kubetune.trainer.models import load_tokenizer

    return load_tokenizer("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def builtin_path() -> str:
    from kubetune.trainer.models import resolve_path

    return resolve_path("builtin:smollm2-135m-instruct")


@pytest.fixture(scope="session")
def s3_store():
    """moto's S3 server on 127.0.0.1, one for the whole session: moto keeps its IAM state, auth included,
    process-wide, so a second server in the same run would find auth already enforced and could not
    create its user (tests/trainer/sources and tests/e2e_local both use it; pods reach it over the host network)."""
    pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install 'kubetune-trainer[test-remote]')"
    )
    from s3server import start_moto

    store = start_moto()
    yield store
    store.server.stop()
