"""The operator's environment (what the chart sets) and its command line."""

from __future__ import annotations

import pytest

from kubetune.operator.main import command
from kubetune.operator.settings import PodSettings, SettingsError, from_env


def test_defaults_and_overrides():
    config = from_env({})
    assert config.poll_seconds == 10 and config.metrics_port == 9090
    config = from_env({"KUBETUNE_IMAGE_CPU_CCL": "r/t:ccl", "KUBETUNE_POLL_SECONDS": "0.5", "KUBETUNE_SHM_SIZE": "8Gi"})
    assert config.pods.images["cpu-ccl"] == "r/t:ccl" and config.pods.images["cpu"].endswith(":cpu-0.1.0")
    assert config.poll_seconds == 0.5 and config.pods.shm_size == "8Gi"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_POLL_SECONDS": "soon"}, "env KUBETUNE_POLL_SECONDS: expected a number, got 'soon'"),
        ({"KUBETUNE_METRICS_PORT": "-1"}, "env KUBETUNE_METRICS_PORT: must be >= 0, got -1"),
        ({"KUBETUNE_TERMINATION_GRACE_SECONDS": "1.5"}, "env KUBETUNE_TERMINATION_GRACE_SECONDS: expected an integer"),
    ],
)
def test_a_bad_variable_is_named(env: dict[str, str], message: str):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        from_env(env)


def test_watch_scope_comes_from_the_environment_unless_given():
    base = ["run", "--module", "kubetune.operator.handlers"]
    assert command([], {}) == [*base, "--all-namespaces"]
    assert command(["--standalone"], {"KUBETUNE_WATCH_NAMESPACES": "a, b"}) == [
        *base,
        "--namespace=a",
        "--namespace=b",
        "--standalone",
    ]
    assert command(["-n", "x"], {"KUBETUNE_WATCH_NAMESPACES": "a"}) == [*base, "-n", "x"]


def test_replicas_get_distinct_peering_priorities():
    # kopf pauses every operator that sees a live peer of its own priority: equal priorities freeze them all.
    def prio(args: list[str]) -> str | None:
        return next((a for a in args if a.startswith("--priority=")), None)

    a = command(["--peering=kubetune"], {"KUBETUNE_POD_NAME": "kubetune-7d9f-abcde"})
    b = command(["--peering=kubetune"], {"KUBETUNE_POD_NAME": "kubetune-7d9f-fghij"})
    assert prio(a) and prio(b) and prio(a) != prio(b)
    assert prio(a) == prio(command(["--peering=kubetune"], {"KUBETUNE_POD_NAME": "kubetune-7d9f-abcde"}))
    assert prio(command(["--standalone"], {"KUBETUNE_POD_NAME": "x"})) is None
    assert prio(command(["--peering=p", "--priority=5"], {})) == "--priority=5"  # an explicit one is kept


def test_pull_secrets_and_namespaces_are_lists():
    config = from_env({"KUBETUNE_IMAGE_PULL_SECRETS": "regcred, other", "KUBETUNE_WATCH_NAMESPACES": "a,b"})
    assert config.pods.image_pull_secrets == ("regcred", "other") and config.watch_namespaces == ("a", "b")
    assert from_env({}).pods.image_pull_secrets == ()


def test_the_tmp_size_limit_comes_from_the_chart_env():
    assert from_env({}).pods.tmp_size == PodSettings().tmp_size
    assert from_env({"KUBETUNE_TMP_SIZE": "40Gi"}).pods.tmp_size == "40Gi"
