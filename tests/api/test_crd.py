"""The generated CRD is a structural schema and covers every field of the pydantic models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kubetune.api.crd import finetunejob_crd
from kubetune.api.finetunejob import FinetuneJobSpec, FinetuneJobStatus

CRD = finetunejob_crd()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]


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
    assert set(training) == {"model", "lora", "data", "training", "distributed", "tracking", "output", "output_dir"}


def test_defaults_and_bounds_reach_the_api_server():
    spec = ROOT["properties"]["spec"]["properties"]
    assert spec["backend"]["enum"] == ["cpu", "cpu-ccl", "xpu", "cuda"] and spec["backend"]["default"] == "cpu"
    assert spec["nodes"]["minimum"] == 1 and spec["nodes"]["default"] == 1
    run_policy = spec["runPolicy"]["properties"]
    assert run_policy["backoffLimit"]["default"] == 3 and run_policy["activeDeadlineSeconds"]["nullable"] is True
    lr = spec["training"]["properties"]["training"]["properties"]["lr"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True
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
    spec = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    for name in ("backend", "nodes", "procsPerNode", "storage", "training", "image"):
        assert spec[name]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf", name
    for name in ("runPolicy", "merge", "scheduling"):  # suspend/resume and the rest stay editable
        assert "x-kubernetes-validations" not in spec[name], name
