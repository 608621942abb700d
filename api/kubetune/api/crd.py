"""Generate the FinetuneJob CRD from the pydantic models: one schema, no hand-written copy to drift.

pydantic emits JSON Schema 2020-12; the API server wants a *structural*
OpenAPI v3.0 schema: every node typed, `$ref`s inlined, `nullable` instead of
`anyOf [..., null]`, boolean `exclusiveMinimum`, int-or-string quantities, and
free-form objects marked `x-kubernetes-preserve-unknown-fields`. Pure functions.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.finetunejob import (
    CACHE_MESSAGE,
    DATA_CLAIM_MESSAGE,
    GROUP,
    KIND,
    MODEL_CLAIM_MESSAGE,
    NAME_MESSAGE,
    NAME_RULE,
    PLURAL,
    QUEUED_SUSPEND_MESSAGE,
    SHORT_NAMES,
    VERSION,
    FinetuneJobSpec,
    FinetuneJobStatus,
)

COPIED = (
    "description",
    "enum",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
)
PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}


def _deref(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def to_structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node (pydantic's) to a structural OpenAPI v3 node."""
    schema = _deref(schema, defs)
    if "anyOf" in schema:
        options = [_deref(s, defs) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = len(options) < len(schema["anyOf"])
        if len(options) == 1:
            out = to_structural(options[0], defs)
        elif {o.get("type") for o in options} == {"integer", "string"}:
            out = {"x-kubernetes-int-or-string": True}
        else:  # e.g. "all-linear" or a list of names: the operator's pydantic parse checks it
            out = dict(PRESERVE)
        if nullable:
            out["nullable"] = True
        if "description" in schema:
            out["description"] = schema["description"]
        if schema.get("default") is not None:
            out["default"] = schema["default"]
        return out

    out: dict[str, Any] = {}
    kind = schema.get("type")
    if "const" in schema:
        out["enum"] = [schema["const"]]
        kind = kind or ("string" if isinstance(schema["const"], str) else None)
    if kind == "object" or "properties" in schema:
        out["type"] = "object"
        if "properties" in schema:
            out["properties"] = {k: to_structural(v, defs) for k, v in schema["properties"].items()}
            if schema.get("required"):
                out["required"] = list(schema["required"])
        elif isinstance(schema.get("additionalProperties"), dict) and schema["additionalProperties"]:
            out["additionalProperties"] = to_structural(schema["additionalProperties"], defs)
        else:
            out.update(PRESERVE)
    elif kind == "array":
        out["type"] = "array"
        out["items"] = to_structural(schema["items"], defs) if schema.get("items") else dict(PRESERVE)
    elif kind:
        out["type"] = kind
    else:
        out.update(PRESERVE)
    for key in COPIED:
        if key in schema:
            out[key] = schema[key]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(schema.get(bound), (int, float)):
            out[inclusive], out[bound] = schema[bound], True
    if schema.get("default") is not None and not (isinstance(schema["default"], dict) and not schema["default"]):
        out["default"] = schema["default"]
    return out


def model_schema(model: type) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return to_structural(raw, raw.get("$defs", {}))


# Fields fixed once a job exists: the workers already run with them (the ConfigMap and the Job templates are
# rendered once). The API server refuses the change instead of the operator silently ignoring it. runPolicy
# and merge stay mutable: suspend, the deadline, TTL and merge are read at every poll, and backoffLimit and
# activeDeadlineSeconds edits are patched onto the worker Job (decide._run_policy).
IMMUTABLE = (
    "backend",
    "image",
    "nodes",
    "procsPerNode",
    "resources",
    "storage",
    "training",
    "scheduling",
    "hfTokenSecret",
    "httpTokenSecret",
    "sources",
)
MUTABLE = ("runPolicy", "merge")


def immutable_rule(field: str) -> dict[str, str]:
    """A transition rule on `spec` (always present), not on the field itself: Kubernetes skips a field's own
    transition rule when the old object lacks the field, so adding an omitted `image` would slip through."""
    present = f"has(self.{field}) == has(oldSelf.{field})"
    return {
        "rule": f"{present} && (!has(self.{field}) || self.{field} == oldSelf.{field})",
        "message": f"spec.{field} cannot change once the job exists",
    }


# Kueue suspends and unsuspends the Jobs of a LocalQueue itself; a second owner of spec.suspend would fight it.
QUEUED_SUSPEND = {
    "rule": "!(has(self.scheduling) && has(self.scheduling.queueName) && has(self.runPolicy) && "
    "has(self.runPolicy.suspend) && self.runPolicy.suspend)",
    "message": QUEUED_SUSPEND_MESSAGE,
}


# Which claims the paths need (FinetuneJobSpec.storage_problems, the same rules): `training` and its sections
# have defaults, but CEL sees the object as sent, so every step is guarded with has().
_MODEL_PATH = "has(self.training) && has(self.training.model) && has(self.training.model.path)"
_REMOTE_MODEL = f"({_MODEL_PATH} && self.training.model.path.contains('://'))"
_DATA = "has(self.training) && has(self.training.data)"
_DATA_PATHS = f"({_DATA} && has(self.training.data.path) ? self.training.data.path : [])"
_EVAL_PATHS = f"({_DATA} && has(self.training.data.eval_path) ? self.training.data.eval_path : [])"
_REMOTE = "p, p.contains('://')"
STORAGE_FOR_SOURCES = [
    {"rule": f"has(self.storage.model) || {_REMOTE_MODEL}", "message": MODEL_CLAIM_MESSAGE},
    {
        "rule": f"has(self.storage.data) || (size({_DATA_PATHS}) > 0 && {_DATA_PATHS}.all({_REMOTE}) && "
        f"{_EVAL_PATHS}.all({_REMOTE}))",
        "message": DATA_CLAIM_MESSAGE,
    },
    {
        "rule": f"has(self.sources) || !({_REMOTE_MODEL} || {_DATA_PATHS}.exists({_REMOTE}) || "
        f"{_EVAL_PATHS}.exists({_REMOTE}))",
        "message": CACHE_MESSAGE,
    },
]


def spec_schema() -> dict[str, Any]:
    spec = model_schema(FinetuneJobSpec)
    spec["x-kubernetes-validations"] = [
        *(immutable_rule(name) for name in IMMUTABLE),
        QUEUED_SUSPEND,
        *STORAGE_FOR_SOURCES,
    ]
    return spec


def finetunejob_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest, ready to dump as YAML into the chart."""
    status = model_schema(FinetuneJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": SHORT_NAMES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progressSummary"},
                        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
                        {"name": "Plan", "type": "string", "jsonPath": ".status.plan.estimate"},
                        {"name": "Result", "type": "string", "jsonPath": ".status.resultLocation"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A LoRA/QLoRA fine-tuning run: workers, then an optional merge.",
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status,
                            },
                            "required": ["spec"],
                            "x-kubernetes-validations": [{"rule": NAME_RULE, "message": NAME_MESSAGE}],
                        }
                    },
                }
            ],
        },
    }


def main() -> None:
    """`python -m kubetune.api.crd > crd.yaml`: the CRD as YAML."""
    import yaml

    print(yaml.safe_dump(finetunejob_crd(), sort_keys=False), end="")


if __name__ == "__main__":
    main()
