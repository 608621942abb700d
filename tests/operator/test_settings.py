"""The operator's environment (what the chart sets) and its command line."""

from __future__ import annotations

import pytest

from kubetune.operator.main import command
from kubetune.operator.settings import SettingsError, from_env


def test_defaults_and_overrides():
    config = from_env({})
    assert config.poll_seconds == 10 and config.metrics_port == 9090
    config = from_env({"KUBETUNE_IMAGE_CPU_CCL": "r/t:ccl", "KUBETUNE_POLL_SECONDS": "0.5", "KUBETUNE_SHM_SIZE": "8Gi"})
    assert config.render.images["cpu-ccl"] == "r/t:ccl" and config.render.images["cpu"].endswith(":cpu-0.1.0")
    assert config.poll_seconds == 0.5 and config.render.shm_size == "8Gi"


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
