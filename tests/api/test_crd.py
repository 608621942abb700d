"""The generated CRD is a structural schema and covers every field of the pydantic models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from kubetune.api.crd import IMMUTABLE, MUTABLE, finetunejob_crd
from kubetune.api.finetunejob import (
    CACHE_MESSAGE,
    DATA_CLAIM_MESSAGE,
    MODEL_CLAIM_MESSAGE,
    QUEUED_SUSPEND_MESSAGE,
    FinetuneJobSpec,
    FinetuneJobStatus,
    name_problem,
)

CRD = finetunejob_crd()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "k8s"


def nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, child in schema.get("properties", {}).items():
        out += nodes(child, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        out += nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += nodes(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize(("path", "node"), nodes(ROOT))
def test_every_node_is_structural(path, node):
    typed = "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    assert typed, f"{path or '<root>'} has no type"
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "const"):
        assert forbidden not in node, f"{path}: {forbidden}"
    assert not ("properties" in node and "additionalProperties" in node), path
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        assert node.get(bound, True) is True, f"{path}: OpenAPI v3.0 wants a boolean {bound}"


def test_every_model_field_is_in_the_schema():
    spec, status = ROOT["properties"]["spec"], ROOT["properties"]["status"]
    for model, schema in ((FinetuneJobSpec, spec), (FinetuneJobStatus, status)):
        aliases = {f.alias or name for name, f in model.model_fields.items()}
        assert aliases == set(schema["properties"]), model.__name__
    assert spec["required"] == ["storage"]
    training = spec["properties"]["training"]["properties"]
    sections = {
        "model",
        "lora",
        "data",
        "training",
        "distributed",
        "tracking",
        "sources",
        "merge",
        "output",
        "output_dir",
    }
    assert set(training) == sections


def test_defaults_and_bounds_reach_the_api_server():
    spec = ROOT["properties"]["spec"]["properties"]
    assert spec["backend"]["enum"] == ["cpu", "cpu-ccl", "xpu", "cuda"] and spec["backend"]["default"] == "cpu"
    assert spec["nodes"]["minimum"] == 1 and spec["nodes"]["default"] == 1
    run_policy = spec["runPolicy"]["properties"]
    assert run_policy["backoffLimit"]["default"] == 3 and run_policy["activeDeadlineSeconds"]["nullable"] is True
    training = spec["training"]["properties"]["training"]["properties"]
    assert training["epochs"]["minimum"] == 0 and training["epochs"]["exclusiveMinimum"] is True
    # lr is a number or "auto": no structural type fits both, so the operator's pydantic parse checks it.
    assert training["lr"]["x-kubernetes-preserve-unknown-fields"] is True and training["lr"]["default"] == "auto"
    assert spec["resources"]["properties"]["limits"]["additionalProperties"] == {"x-kubernetes-int-or-string": True}


def test_names_status_and_printer_columns():
    assert CRD["metadata"]["name"] == "finetunejobs.kubetune.dev"
    assert CRD["spec"]["names"]["shortNames"] == ["ftj"]
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {
        "Phase": ".status.phase",
        "Progress": ".status.progressSummary",
        "Loss": ".status.progress.loss",
        "Plan": ".status.plan.estimate",
        "Result": ".status.resultLocation",
        "Age": ".metadata.creationTimestamp",
    }


def test_spec_model_reports_every_problem_with_its_path():
    with pytest.raises(ValidationError) as err:
        FinetuneJobSpec.model_validate(
            {
                "backend": "tpu",
                "nodes": 0,
                "storage": {"model": {"claimName": ""}, "data": {"claimName": "d"}},
                "training": {"lora": {"r": 0}},
            }
        )
    locs = {".".join(map(str, e["loc"])) for e in err.value.errors()}
    assert {"backend", "nodes", "storage.model.claimName", "storage.output", "training.lora.r"} <= locs


def test_crd_is_a_valid_apiextensions_v1_object():
    import kubernetes_validate

    kubernetes_validate.validate(CRD, "1.30", strict=True)


def test_what_the_workers_already_run_with_cannot_change():
    spec = ROOT["properties"]["spec"]
    rules = {r["message"].split()[0]: r["rule"] for r in spec["x-kubernetes-validations"] if "oldSelf" in r["rule"]}
    assert set(rules) == {f"spec.{name}" for name in IMMUTABLE}
    # Every spec field is either fixed or read at every poll: none is rendered once and then ignored.
    assert set(IMMUTABLE) | set(MUTABLE) == set(spec["properties"])


def cel_errors(new: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """The CRD's x-kubernetes-validations evaluated as the API server does (k8s.io/docs "Validation rules"):
    each rule on its node's value; a transition rule (one naming oldSelf) only on update and only where the
    old object has that node too."""
    import celpy

    env = celpy.Environment()
    errors: list[str] = []

    def walk(schema: dict[str, Any], value: Any, previous: Any) -> None:
        for rule in schema.get("x-kubernetes-validations", []):
            transition = "oldSelf" in rule["rule"]
            if transition and previous is None:
                continue
            activation = {"self": celpy.json_to_cel(value)}
            if transition:
                activation["oldSelf"] = celpy.json_to_cel(previous)
            if not env.program(env.compile(rule["rule"])).evaluate(activation):
                errors.append(rule["message"])
        for key, child in schema.get("properties", {}).items():
            if isinstance(value, dict) and key in value:
                walk(child, value[key], previous.get(key) if isinstance(previous, dict) else None)

    walk(ROOT, new, old)
    return errors


def ftj(name: str = "quotes", **spec: Any) -> dict[str, Any]:
    storage = {"model": {"claimName": "m"}, "data": {"claimName": "d"}, "output": {"claimName": "o"}}
    return {"metadata": {"name": name}, "spec": {"storage": storage, **spec}}


def test_an_edit_to_what_the_workers_run_with_is_refused_even_when_the_field_was_omitted():
    old = ftj()
    assert cel_errors(ftj(runPolicy={"suspend": True}), old) == []  # read at every poll: editable
    assert cel_errors(ftj(merge={"enabled": False}), old) == []
    assert cel_errors(ftj(image="registry.local/t:1"), old) == ["spec.image cannot change once the job exists"]
    assert cel_errors(ftj(training={"lora": {"r": 4}}), old) == ["spec.training cannot change once the job exists"]
    with_resources = ftj(resources={"requests": {"cpu": "1"}})
    assert cel_errors(ftj(resources={"requests": {"cpu": "2"}}), with_resources) == [
        "spec.resources cannot change once the job exists"
    ]
    assert cel_errors(ftj(), ftj(hfTokenSecret={"name": "hf"})) == [
        "spec.hfTokenSecret cannot change once the job exists"
    ]
    assert cel_errors(ftj(scheduling={"queueName": "b"}), ftj(scheduling={"queueName": "a"})) == [
        "spec.scheduling cannot change once the job exists"
    ]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("quotes", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("1quotes", False),
        ("q.uotes", False),
        ("quotes-", False),
        ("Quotes", False),
        ("q-1", True),
    ],
)
def test_only_names_whose_children_the_api_server_accepts_are_admitted(name, ok):
    assert (cel_errors(ftj(name)) == []) is ok
    assert (name_problem(name) is None) is ok  # the operator's own check says the same


def test_a_queued_job_cannot_be_suspended_through_the_spec():
    queued = ftj(scheduling={"queueName": "team-a"}, runPolicy={"suspend": True})
    assert cel_errors(queued) == [QUEUED_SUSPEND_MESSAGE]
    assert cel_errors(ftj(scheduling={"queueName": "team-a"}, runPolicy={"suspend": False})) == []


def test_the_backend_table_is_the_one_list_of_backends():
    from typing import get_args

    from kubetune.api import backends
    from kubetune.api.config import DistributedSection

    assert get_args(backends.BackendName) == backends.NAMES  # the CRD enum and the table agree
    assert ROOT["properties"]["spec"]["properties"]["backend"]["enum"] == list(backends.NAMES)
    collectives = set(get_args(DistributedSection.model_fields["backend"].annotation)) - {"auto"}
    for backend in backends.TABLE.values():
        assert backend.collectives <= collectives and "gloo" in backend.collectives, backend.name
        assert (backend.device is None) == (backend.name.startswith("cpu")), backend.name
        assert backend.device is None or backend.limits.get(backend.device) == "1", (
            backend.name
        )  # strings: see test_k8s


def test_claims_are_needed_only_for_local_paths_and_remote_ones_need_the_cache():
    output = {"output": {"claimName": "o"}}
    remote = {"model": {"path": "hf://org/m"}, "data": {"path": ["s3://bucket/train.jsonl"]}}
    cache = {"cache": {"claimName": "c"}}

    def spec(storage: dict[str, Any], training: dict[str, Any] | None, sources: dict[str, Any] | None) -> dict:
        body: dict[str, Any] = {"storage": storage}
        if training is not None:
            body["training"] = training
        if sources is not None:
            body["sources"] = sources
        return {"metadata": {"name": "q"}, "spec": body}

    assert cel_errors(spec(output, remote, cache)) == []
    assert cel_errors(spec(output, remote, None)) == [CACHE_MESSAGE]
    assert cel_errors(spec(output, None, None)) == [MODEL_CLAIM_MESSAGE, DATA_CLAIM_MESSAGE]  # defaults are local
    local_eval = {**remote, "data": {**remote["data"], "eval_path": ["eval.jsonl"]}}
    assert cel_errors(spec(output, local_eval, cache)) == [DATA_CLAIM_MESSAGE]
    # The model's own check says the same, every problem at once.
    for body in (spec(output, remote, cache), spec(output, remote, None), spec(output, local_eval, cache)):
        try:
            problems = FinetuneJobSpec.model_validate(body["spec"]).storage_problems()
        except ValidationError as exc:
            (err,) = exc.errors()
            problems = err["ctx"]["problems"]
        assert problems == cel_errors(body)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("finetunejob-*.yaml")), ids=lambda p: p.name)
def test_the_example_finetunejobs_pass_the_crds_rules_and_the_operators_checks(path):
    doc = yaml.safe_load(path.read_text())
    assert cel_errors(doc) == []
    assert FinetuneJobSpec.model_validate(doc["spec"]).storage_problems() == []
