"""The trainer's environment layer next to what the kubelet injects (issue 21: namespaced installs)."""

from __future__ import annotations

import pytest
from kube import chart_objects
from kubelet import service_link_env

from kubetune.api import ConfigError, load_config
from kubetune.api.sources import layer_from_env

# kubernetes.io/docs/concepts/services-networking/service/#environment-variables: the docs' own example.
DOCS_SERVICE = {
    "metadata": {"name": "redis-primary"},
    "spec": {"clusterIP": "10.0.0.11", "ports": [{"port": 6379, "protocol": "TCP"}]},
}
DOCS_ENV = {
    "REDIS_PRIMARY_SERVICE_HOST": "10.0.0.11",
    "REDIS_PRIMARY_SERVICE_PORT": "6379",
    "REDIS_PRIMARY_PORT": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP": "tcp://10.0.0.11:6379",
    "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp",
    "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
    "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "10.0.0.11",
}


def test_the_emulated_kubelet_injects_what_the_docs_show():
    assert service_link_env([DOCS_SERVICE]) == DOCS_ENV
    headless = {"metadata": {"name": "x"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    assert service_link_env([headless]) == {}


def chart_service_links() -> dict[str, str]:
    """The variables every pod of the release namespace gets for the chart's own Services."""
    services = [o for o in chart_objects(namespace="ml") if o["kind"] == "Service"]
    assert any(s["metadata"]["name"] == "kubetune-metrics" for s in services)
    for service in services:  # the address the API server assigns
        service["spec"].setdefault("clusterIP", "10.96.0.10")
    return service_link_env(services)


def test_the_charts_service_links_are_not_config_keys():
    env = chart_service_links()
    assert {"KUBETUNE_METRICS_PORT", "KUBETUNE_METRICS_SERVICE_HOST", "KUBETUNE_METRICS_SERVICE_PORT"} <= set(env)
    assert layer_from_env(env).values == {}
    config = load_config("training: {max_steps: 3}\n", environ={**env, "KUBETUNE_TRAINING__LR": "0.001"})
    assert config.training.max_steps == 3 and config.training.lr == 0.001


@pytest.mark.parametrize("name", ["kubetune-x", "kubetune-lora", "kubetune-output"])
def test_any_service_named_kubetune_something_is_ignored(name):
    service = {"metadata": {"name": name}, "spec": {"clusterIP": "10.0.0.2", "ports": [{"name": "h-2", "port": 80}]}}
    env = service_link_env([service])
    assert len(env) == 8 and layer_from_env(env).values == {}


def test_a_misspelled_key_is_still_refused():
    with pytest.raises(ConfigError, match="KUBETUNE_TRAINING__LRR"):
        load_config(environ={"KUBETUNE_TRAINING__LRR": "1"})
    with pytest.raises(ConfigError, match="KUBETUNE_SEED"):  # flat, but no service-link shape
        load_config(environ={"KUBETUNE_SEED": "1"})


def test_a_key_starting_with_str_keeps_its_name_in_errors():
    from pydantic import BaseModel, ValidationError

    from kubetune.api.sources import format_errors

    class Section(BaseModel):
        strategy: int | str = 1
        stride: list[int] = []

    try:
        Section.model_validate({"strategy": [1], "stride": ["x"]})
    except ValidationError as exc:
        lines = format_errors(exc, {("strategy",): "c.yaml:3", ("stride",): "c.yaml:4"})
    assert any(line.startswith("c.yaml:3: strategy: ") for line in lines), lines
    assert any(line.startswith("c.yaml:4: stride.0: ") for line in lines), lines
