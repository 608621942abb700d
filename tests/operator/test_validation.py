"""The operator's policy (issue 29): what a FinetuneJob may ask for, checked before any child exists."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import conditions as cond
from kubetune.api.finetunejob import FinetuneJobSpec
from kubetune.operator.decide import decide
from kubetune.operator.observed import Observed
from kubetune.operator.settings import PodSettings, Policy, SettingsError, from_env
from kubetune.operator.validation import policy_problems

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples" / "k8s").glob("finetunejob-*.yaml"))
BASE: dict[str, Any] = {
    "storage": {"model": {"claimName": "m"}, "data": {"claimName": "d"}, "output": {"claimName": "o"}},
    "training": {"training": {"max_steps": 1}},
}
SHA = "0123456789abcdef0123456789abcdef01234567"


def problems(settings: PodSettings | None = None, namespace: str = "ml", **spec: Any) -> list[str]:
    return policy_problems(FinetuneJobSpec.model_validate({**BASE, **spec}), namespace, settings or PodSettings())


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_defaults_let_every_example_through(example: Path):
    spec = FinetuneJobSpec.model_validate(yaml.safe_load(example.read_text())["spec"])
    assert policy_problems(spec, "ml", from_env({}).pods) == []


def test_only_the_trainer_images_unless_allowed():
    assert problems(image="kubetune/trainer:cuda-0.1.0") == []  # one of the chart's trainerImages
    (line,) = problems(image="attacker/x:latest")
    assert line.startswith("spec.image: 'attacker/x:latest' is not an allowed trainer image")
    allowed = PodSettings(policy=Policy(images=("registry.example.com/ml/*",)))
    assert problems(allowed, image="registry.example.com/ml/trainer:1") == []
    assert problems(allowed, image="registry.example.com/other/trainer:1") != []


def test_secrets_are_limited_per_namespace():
    settings = PodSettings(policy=Policy(secrets=("ml/s3-readonly", "*/hf-token")))
    spec = {
        "sources": {"cache": {"claimName": "c"}, "s3CredentialsSecret": "s3-readonly"},
        "hfTokenSecret": {"name": "hf-token"},
    }
    assert problems(settings, **spec) == []
    (line,) = problems(settings, namespace="team-b", **spec)
    assert line.startswith(
        "spec.sources.s3CredentialsSecret: Secret 's3-readonly' may not be used in namespace 'team-b'"
    )
    assert problems(settings, hfTokenSecret={"name": "db-password"})[0].startswith("spec.hfTokenSecret.name:")
    assert problems(hfTokenSecret={"name": "anything"}) == []  # default: unrestricted


def test_priority_classes_and_tolerations():
    assert problems(scheduling={"priorityClassName": "batch-low"}) == []
    assert "priorityClassName" in problems(scheduling={"priorityClassName": "system-node-critical"})[0]
    narrow = PodSettings(policy=Policy(priority_classes=("batch-*",), toleration_keys=("nvidia.com/gpu",)))
    assert problems(narrow, scheduling={"priorityClassName": "high"}) != []
    gpu = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert problems(narrow, scheduling={"tolerations": [gpu]}) == []
    assert "tolerations[0]" in problems(narrow, scheduling={"tolerations": [{"key": "node-role/control-plane"}]})[0]
    (line,) = problems(scheduling={"tolerations": [{"operator": "Exists"}]})  # tolerates every taint
    assert line.startswith("spec.scheduling.tolerations[0]: a toleration of key '(any)' is not allowed")


def test_remote_code_is_off_and_then_only_pinned():
    data = {"path": ["s3://bucket/train.jsonl"]}
    remote = {"training": {"model": {"path": "hf://org/x", "trust_remote_code": True}, "data": data}}
    sources = {"sources": {"cache": {"claimName": "c"}}, "storage": {"output": {"claimName": "o"}}}
    assert "not allowed by the operator's policy" in problems(**remote, **sources)[0]
    allowed = PodSettings(policy=Policy(remote_code=True))
    assert "pinned to a commit" in problems(allowed, **remote, **sources)[0]
    pinned = {"training": {"model": {"path": f"hf://org/x@{SHA}", "trust_remote_code": True}, "data": data}}
    assert problems(allowed, **pinned, **sources) == []
    local = {"training": {"model": {"trust_remote_code": True}}}  # a claim the administrator mounts
    assert problems(allowed, **local) == []


def test_a_refused_spec_fails_before_any_child_and_a_running_job_is_left_alone():
    meta = {"name": "x", "namespace": "ml", "uid": "u"}
    plan = decide(meta, {**BASE, "image": "attacker/x"}, {}, Observed(now=datetime.now(UTC)), PodSettings())
    assert plan.create == [] and plan.done
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NotAllowed" and "spec.image" in failed["message"]
    admitted = {"phase": "Running", "conditions": [{"type": cond.INITIALIZED, "status": "True"}]}
    running = decide(meta, {**BASE, "image": "attacker/x"}, admitted, Observed(now=datetime.now(UTC)), PodSettings())
    assert running.status["phase"] == "Running"  # admitted under an earlier policy: not killed by a change


def test_the_policy_is_read_from_the_chart_env():
    env = {
        "KUBETUNE_ALLOWED_IMAGES": "r.example/ml/*, r.example/base:1",
        "KUBETUNE_ALLOWED_SECRETS": "ml/s3,*/hf",
        "KUBETUNE_ALLOWED_PRIORITY_CLASSES": "batch-*",
        "KUBETUNE_ALLOWED_TOLERATION_KEYS": "nvidia.com/gpu",
        "KUBETUNE_ALLOW_REMOTE_CODE": "true",
    }
    assert from_env(env).pods.policy == Policy(
        ("r.example/ml/*", "r.example/base:1"), ("ml/s3", "*/hf"), ("batch-*",), ("nvidia.com/gpu",), True
    )
    assert from_env({"KUBETUNE_ALLOWED_SECRETS": ""}).pods.policy.secrets == ()  # set but empty: none allowed
    with pytest.raises(SettingsError, match="KUBETUNE_ALLOWED_SECRETS: 's3' is not <namespace>/<secret>"):
        from_env({"KUBETUNE_ALLOWED_SECRETS": "s3"})
    with pytest.raises(SettingsError, match="KUBETUNE_ALLOW_REMOTE_CODE"):
        from_env({"KUBETUNE_ALLOW_REMOTE_CODE": "yes"})


def test_the_https_token_secret_is_limited_like_the_others():
    settings = PodSettings(policy=Policy(secrets=("ml/web-token",)))
    assert problems(settings, httpTokenSecret={"name": "web-token"}) == []
    (line,) = problems(settings, httpTokenSecret={"name": "db-password"})
    assert line.startswith("spec.httpTokenSecret.name: Secret 'db-password' may not be used in namespace 'ml'")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", {"path": "https://bob:hunter2pass@files.example/model.tar"}),
        ("data", {"path": ["https://files.example/t.jsonl?X-Amz-Signature=deadbeefcafe1234"]}),
    ],
)
def test_a_credential_in_a_location_is_refused_naming_the_field_without_quoting_it(field, value):
    # The config becomes a ConfigMap (readable with `view`): a credential in a URL goes through a Secret instead.
    spec = {
        "storage": {"output": {"claimName": "o"}, **({"data": {"claimName": "d"}} if field == "model" else {})},
        "sources": {"cache": {"claimName": "c"}},
        "training": {"model": {"path": "hf://org/m"}, "training": {"max_steps": 1}, field: value},
    }
    plan = decide(
        {"name": "j", "namespace": "ml", "uid": "u"}, spec, {}, Observed(now=datetime.now(UTC)), PodSettings()
    )
    assert plan.status["phase"] == "Failed" and plan.create == []
    where = "spec.training.model.path" if field == "model" else "spec.training.data.path[0]"
    assert plan.status["message"].startswith(f"{where}: ") and "through a Secret" in plan.status["message"]
    assert "hunter2pass" not in plan.status["message"] and "deadbeefcafe1234" not in plan.status["message"]


@pytest.mark.parametrize(
    "url", ["https://files.example/t.jsonl#sha256=" + "a" * 64, "https://files.example/t.jsonl?download=true"]
)
def test_a_pinned_or_plain_query_location_is_not_a_credential(url):
    spec = {
        "storage": {"output": {"claimName": "o"}, "model": {"claimName": "m"}},
        "sources": {"cache": {"claimName": "c"}},
        "training": {"data": {"path": [url]}},
    }
    plan = decide(
        {"name": "j", "namespace": "ml", "uid": "u"}, spec, {}, Observed(now=datetime.now(UTC)), PodSettings()
    )
    assert plan.status.get("phase") != "Failed" and plan.create


def test_a_running_job_an_older_operator_admitted_is_not_failed_for_a_credential_in_its_config():
    spec = {
        "storage": {"output": {"claimName": "o"}, "model": {"claimName": "m"}},
        "sources": {"cache": {"claimName": "c"}},
        "training": {"data": {"path": ["https://files.example/t.jsonl?sig=deadbeefcafe1234"]}},
    }
    meta = {"name": "j", "namespace": "ml", "uid": "u"}
    plan = decide(meta, spec, {"phase": "Running"}, Observed(now=datetime.now(UTC)), PodSettings())
    assert plan.status["phase"] != "Failed" and "credential" not in (plan.status.get("message") or "")


def test_a_resource_that_is_not_a_quantity_is_named_before_the_api_server_refuses_the_job():
    from kubetune.operator.validation import spec_problems

    raw = {**BASE, "resources": {"requests": {"cpu": "2", "memory": "8GB"}, "limits": {"memory": "8e9"}}}
    spec, found = spec_problems(raw)
    assert spec is None
    assert found == ["spec.resources.requests.memory: '8GB' is not a Kubernetes quantity (e.g. 16Gi, 16G, 500m, 4)"]
    assert spec_problems({**BASE, "resources": {"limits": {"memory": "8G"}}})[1] == []


def test_a_negative_resource_quantity_is_named_not_passed_to_the_trainer():
    """`-1Gi` parses as a quantity (the API server takes it), but the initializer would pass `--memory -1073741824`
    to the trainer and fail with exit 2: refused here, with its field, like any other spec problem."""
    from kubetune.operator.validation import spec_problems

    raw = {**BASE, "resources": {"requests": {"cpu": "-2"}, "limits": {"memory": "-1Gi"}}}
    spec, found = spec_problems(raw)
    assert spec is None
    assert found == [
        "spec.resources.requests.cpu: '-2' is negative",
        "spec.resources.limits.memory: '-1Gi' is negative",
    ]
    plan = decide({"name": "j", "namespace": "ml", "uid": "u"}, raw, {}, Observed(now=datetime.now(UTC)), PodSettings())
    assert plan.status["phase"] == "Failed" and not plan.create and "'-1Gi' is negative" in plan.status["message"]
    assert spec_problems({**BASE, "resources": {"limits": {"memory": "0"}}})[1] == []  # zero is no negative
