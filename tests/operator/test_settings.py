"""The operator's environment (what the chart sets) and its command line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kubetune.api.contract import ExitCode
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


@pytest.mark.parametrize("value", ["team-*", "Team_A", "a" * 64])
def test_a_watched_namespace_must_be_a_name(value: str):
    # A glob would make kopf list every namespace (a right namespaced mode withholds); the rest kopf cannot watch.
    with pytest.raises(SettingsError, match=r"env KUBETUNE_WATCH_NAMESPACES: '.*' is not a namespace name"):
        command([], {"KUBETUNE_WATCH_NAMESPACES": f"ml,{value}"})


def test_the_operator_refuses_a_bad_namespace_in_one_line_before_kopf_starts():
    env = {**os.environ, "KUBETUNE_WATCH_NAMESPACES": "team-*"}
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.operator.main", "--standalone"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == ExitCode.CONFIG
    assert done.stderr.strip().splitlines() == [
        "kubetune-operator: env KUBETUNE_WATCH_NAMESPACES: 'team-*' is not a namespace name "
        "(lowercase letters, digits and '-', at most 63 characters; no globs)"
    ]


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
