"""Generate the chart's derived files: the FinetuneJob CRD template and values.schema.json.

`make chart` runs it; tests/charts fails when either file is stale. The CRD comes from the
pydantic models in kubetune.api (the same ones the operator parses), the values schema from
ChartValues below, whose fields mirror values.yaml (the test checks they match key for key); the bounds
and defaults of what the operator reads come from its own settings (kubetune.operator.settings.Knob).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from generated import write_or_check
from pydantic import BaseModel, ConfigDict, Field, create_model

from kubetune.api import backends
from kubetune.api.crd import finetunejob_crd
from kubetune.operator import settings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "kubetune"
CRD_TEMPLATE = CHART / "templates" / "crd-finetunejobs.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Image(Strict):
    repository: str = Field(min_length=1)
    tag: str = ""
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


# One required image per row of the backend table.
TrainerImages = create_model(
    "TrainerImages",
    __config__=ConfigDict(extra="forbid"),
    **{b.name: (str, Field(min_length=1, description=b.description)) for b in backends.TABLE.values()},
)


class Peering(Strict):
    name: str = Field(min_length=1, max_length=63)


# A namespace's name, as the operator checks it: each becomes a Role's namespace and a `kopf run --namespace`.
Namespace = Annotated[str, Field(pattern=settings.NAMESPACE_NAME.pattern, max_length=63)]


class Watch(Strict):
    namespaced: bool = True
    namespaces: list[Namespace] = []


class Crds(Strict):
    enabled: bool = True
    keep: bool = True


def knob(k: settings.Knob, description: str) -> Any:
    """A chart value read by the operator from k.env: the default and bounds are the operator's own."""
    return Field(k.kind(k.default), ge=k.minimum, le=k.maximum, description=f"{description} ({k.env})")


class Operator(Strict):
    pollSeconds: float = knob(settings.POLL_SECONDS, "Seconds between two looks at a running FinetuneJob")
    workerTerminationGracePeriodSeconds: int = knob(settings.TERMINATION_GRACE_SECONDS, "Worker pods' grace period")
    workerShmSize: str = Field("2Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")
    workerTmpSize: str = Field(
        settings.PodSettings().tmp_size,
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
        description="sizeLimit of the pods' /tmp emptyDir (KUBETUNE_TMP_SIZE)",
    )
    logFormat: Literal["json", "plain", "full"] = "json"
    extraArgs: list[str] = []


class Metrics(Strict):
    enabled: bool = True
    port: int = Field(int(settings.METRICS_PORT.default), ge=1, le=settings.METRICS_PORT.maximum)  # 0 is "off"


class Policy(Strict):
    """What a FinetuneJob may ask for (kubetune.operator.settings.Policy; globs)."""

    images: list[str] = []
    secrets: list[str] = Field(["*/*"], description="<namespace>/<secret> globs")
    priorityClasses: list[str] = []
    tolerationKeys: list[str] = []
    allowRemoteCode: bool = False


class NetworkPolicy(Strict):
    enabled: bool = False
    egress: list[dict[str, Any]] = []


class ServiceAccount(Strict):
    create: bool = True
    name: str = ""


class Rbac(Strict):
    create: bool = True


class ChartValues(Strict):
    image: Image
    imagePullSecrets: list[dict[str, Any]] = []
    trainerImages: TrainerImages  # type: ignore[valid-type]
    replicaCount: int = Field(1, ge=0, le=5)
    peering: Peering
    watch: Watch
    crds: Crds
    operator: Operator
    metrics: Metrics
    policy: Policy = Policy()
    networkPolicy: NetworkPolicy = NetworkPolicy()
    probePort: int = Field(8080, ge=1, le=65535)
    serviceAccount: ServiceAccount
    rbac: Rbac
    resources: dict[str, Any] = {}
    podAnnotations: dict[str, str] = {}
    nodeSelector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] = {}
    podSecurityContext: dict[str, Any] = {}
    securityContext: dict[str, Any] = {}


def values_schema() -> dict[str, Any]:
    schema = ChartValues.model_json_schema(by_alias=True)
    return {"$schema": "http://json-schema.org/draft-07/schema#", **schema}


def crd_template() -> str:
    crd = finetunejob_crd()
    body = yaml.safe_dump(crd, sort_keys=False)
    # Helm templating around the generated YAML: the CRD is optional, kept on uninstall, and labelled.
    body = body.replace(
        "metadata:\n  name: finetunejobs.kubetune.dev\n",
        "metadata:\n  name: finetunejobs.kubetune.dev\n"
        '  labels:\n    {{- include "kubetune.labels" . | nindent 4 }}\n'
        "  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n",
        1,
    )
    # Descriptions may contain "{{"; none do today, and the test renders the chart to prove it.
    header = "# Generated by tools/gen_chart.py from kubetune.api (make chart); do not edit.\n"
    return header + "{{- if .Values.crds.enabled }}\n" + body + "{{- end }}\n"


def expected() -> dict[Path, str]:
    return {CRD_TEMPLATE: crd_template(), VALUES_SCHEMA: json.dumps(values_schema(), indent=2) + "\n"}


def main() -> int:
    return write_or_check(expected(), "chart", sys.argv, ROOT)


if __name__ == "__main__":
    sys.exit(main())
