"""charts/kubetune rendered with Helm's own Go SDK (helm-python-sdk), linted, schema-checked, and every
rendered manifest validated against the Kubernetes API schemas (kubernetes-validate). No cluster."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import gen_chart
import jsonschema
import kubernetes_validate
import pytest
import yaml
from apirules import Refused
from rbac import RBAC

from kubetune.api import backends
from kubetune.api.crd import finetunejob_crd

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's Go SDK as a wheel) is not installed")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
K8S_VERSION = "1.30"
NAMESPACED = {"watch": {"namespaced": True, "namespaces": ["team-a", "team-b"]}}
ALL_NAMESPACES = {"watch": {"namespaced": False}}
RELEASE_NAMESPACE = "kubetune-system"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values or {}, name="kubetune", namespace=RELEASE_NAMESPACE)
    docs = []
    for path, text in files.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_generated_files_are_current():
    for path, text in gen_chart.expected().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run `make chart`"


def test_values_yaml_matches_its_schema_model_and_every_value_is_commented():
    text = (CHART / "values.yaml").read_text()
    gen_chart.ChartValues.model_validate(yaml.safe_load(text))
    free_form = {"resources", "podSecurityContext", "securityContext"}
    lines = text.splitlines()
    parent = ""
    for i, line in enumerate(lines):
        match = re.match(r"^( {0,2})([A-Za-z-]+):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        if depth == 0:
            parent = match.group(2)
        elif parent in free_form:
            continue
        previous = next(p for p in reversed(lines[:i]) if p.strip())
        assert previous.strip().startswith("#"), f"values.yaml:{i + 1}: `{line.strip()}` has no comment above it"


def test_lint_has_no_errors():
    result = helm.lint(str(CHART))
    assert result["errors"] == [] and all(m["severity"] < 3 for m in result["messages"]), result


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
        ({"metrics": {"port": 0}}, "/metrics/port"),
        ({"surprise": True}, "surprise"),
        ({"watch": {"namespaces": ["Team_A"]}}, "/watch/namespaces/0"),  # a Role's namespace: a DNS label
    ],
)
def test_values_schema_refuses_bad_values(bad: dict[str, Any], named: str):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema({})  # the defaults pass
        with pytest.raises(Exception, match=named):
            chart.validate_schema(bad)


VARIANTS = {
    "default": {},
    "namespaced": NAMESPACED,
    "all-namespaces": ALL_NAMESPACES,
    "peering": {"replicaCount": 2, **NAMESPACED},
    "all-namespaces-peering": {"replicaCount": 2, **ALL_NAMESPACES},
    "network-policy": {"networkPolicy": {"enabled": True}},
}


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_rendered_manifest_is_valid_kubernetes(values: dict[str, Any]):
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("kopf.dev/"):
            continue  # kopf's peering objects: their CRD (crds/) is checked as a CRD below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for path in (CHART / "crds").glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


def test_the_crd_in_the_chart_is_the_generated_one():
    crd = by_kind(render(), "CustomResourceDefinition")[0]
    assert crd["spec"] == finetunejob_crd()["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert by_kind(render({"crds": {"enabled": False}}), "CustomResourceDefinition") == []
    assert "annotations" not in by_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")[0]["metadata"]


def rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for d in docs if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]]


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_rbac_is_least_privilege(values: dict[str, Any]):
    """No wildcard, no Secret, no verb beyond these (tests/integration/charts/test_rbac.py derives them from a run)."""
    allowed = {
        "finetunejobs": {"get", "list", "watch", "patch"},
        "finetunejobs/status": {"patch"},
        "finetunejobs/finalizers": {"update"},  # blockOwnerDeletion under OwnerReferencesPermissionEnforcement
        "jobs": {"get", "create", "patch", "delete"},
        "configmaps": {"get", "create", "delete"},
        "services": {"get", "create", "delete"},
        "pods": {"list"},
        "pods/log": {"get"},
        "events": {"create", "list"},  # list: the Job controller's FailedCreate Events
        "customresourcedefinitions": {"list", "watch"},
        "networkpolicies": {"get", "create", "delete"},  # networkPolicy.enabled only
        "clusterkopfpeerings": {"list", "watch", "patch"},
        "kopfpeerings": {"list", "watch", "patch"},
    }
    for rule in rules(render(values)):
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        for resource in rule["resources"]:
            assert set(rule["verbs"]) <= allowed[resource], (resource, rule["verbs"])
    assert "secrets" not in str(rules(render(values)))  # the operator never reads a token: pods mount it


def test_namespaced_mode_has_no_cluster_rights():
    docs = render(NAMESPACED)
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == ["team-a", "team-b"]
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "kubetune-system"
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["KUBETUNE_WATCH_NAMESPACES"] == "team-a,team-b"
    all_env = {e["name"] for e in container(render(ALL_NAMESPACES))["env"]}
    assert "KUBETUNE_WATCH_NAMESPACES" not in all_env


def operator_command(docs: list[dict[str, Any]]) -> list[str]:
    """The `kopf run` command line the operator builds from the Deployment's arguments and environment."""
    from kubetune.operator.main import command

    c = container(docs)
    return command(c["args"], {e["name"]: str(e["value"]) for e in c["env"] if "value" in e})


def test_the_default_serves_only_the_release_namespace():
    docs = render()
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    rbac = RBAC.from_manifests(docs)
    assert rbac.allows("create", "batch", "jobs", RELEASE_NAMESPACE)
    for namespace in ("ml", "kube-system", None):
        assert not rbac.allows("create", "batch", "jobs", namespace) and not rbac.allows(
            "list", "kubetune.dev", "finetunejobs", namespace
        )
    cmd = operator_command(docs)
    assert [a for a in cmd if a.startswith(("--namespace", "--all-namespaces", "-A"))] == [
        f"--namespace={RELEASE_NAMESPACE}"
    ]


def test_listed_namespaces_get_the_write_rights_and_no_other_namespace_does():
    docs = render({"watch": {"namespaces": ["team-a"]}, "networkPolicy": {"enabled": True}})
    rbac = RBAC.from_manifests(docs)
    rbac.check("create", "batch", "jobs", "team-a")
    with pytest.raises(Refused) as refused:
        rbac.check("create", "batch", "jobs", "kube-system")
    assert refused.value.status == 403 and 'in the namespace "kube-system"' in refused.value.message
    writes = {"create", "patch", "update", "delete"}
    granted = {(r.namespace, v, res) for r in rbac.rules for v in r.verbs & writes for res in r.resources}
    assert granted and {ns for ns, *_ in granted} == {"team-a"}  # no write outside it, none cluster-wide
    assert [r for r in rbac.rules if r.namespace is None] == []  # and no cluster-scoped read either
    assert "--namespace=team-a" in operator_command(docs) and "--all-namespaces" not in operator_command(docs)


def test_all_namespaces_is_an_explicit_choice_that_grants_everywhere():
    docs = render(ALL_NAMESPACES)
    rbac = RBAC.from_manifests(docs)
    assert [d["kind"] for d in docs if d["kind"].endswith("Role")] == ["ClusterRole"]
    assert rbac.allows("create", "batch", "jobs", "kube-system")  # what values.yaml says it grants
    assert "--all-namespaces" in operator_command(docs)
    with pytest.raises(Exception, match=r"watch\.namespaces=\[team-a\]: set watch\.namespaced=true"):
        render({"watch": {"namespaced": False, "namespaces": ["team-a"]}})  # a list that would narrow nothing


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_operator_pod_is_restricted_and_configured():
    docs = render({"trainerImages": {"cuda": "registry.local/trainer:cuda"}, "metrics": {"enabled": False}})
    deployment = by_kind(docs, "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and "--standalone" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KUBETUNE_IMAGE_CUDA"] == "registry.local/trainer:cuda" and env["KUBETUNE_METRICS_PORT"] == "0"
    assert by_kind(docs, "Service") == []  # no metrics Service when metrics are off
    peered = container(render({"replicaCount": 2}))
    assert "--peering=kubetune" in peered["args"] and "--standalone" not in peered["args"]


def test_operator_settings_read_what_the_chart_sets():
    from kubetune.operator.settings import from_env

    values = {"operator": {"pollSeconds": 3}, "imagePullSecrets": [{"name": "regcred"}, {"name": "mirror"}]}
    env = {e["name"]: str(e["value"]) for e in container(render(values))["env"] if "value" in e}
    config = from_env(env)
    assert config.poll_seconds == 3 and config.metrics_port == 9090
    assert config.pods.images == {b.name: b.image for b in backends.TABLE.values()}
    assert config.pods.image_pull_secrets == ("regcred", "mirror")  # the trainer pods pull with them too


def test_the_policy_values_reach_the_operator():
    from kubetune.operator.settings import Policy, from_env

    def policy(values: dict[str, Any]) -> Policy:
        env = {e["name"]: str(e["value"]) for e in container(render(values))["env"] if "value" in e}
        return from_env(env).pods.policy

    assert policy({}) == Policy()  # the chart's defaults are the operator's
    values = {
        "images": ["r.example/ml/*"],
        "secrets": ["ml/s3", "*/hf"],
        "priorityClasses": ["batch-*"],
        "tolerationKeys": ["nvidia.com/gpu"],
        "allowRemoteCode": True,
    }
    assert policy({"policy": values}) == Policy(
        ("r.example/ml/*",), ("ml/s3", "*/hf"), ("batch-*",), ("nvidia.com/gpu",), True
    )
    assert policy({"policy": {"secrets": []}}).secrets == ()  # an empty list allows no Secret


def test_the_network_policy_switch_reaches_the_operator_with_its_rights():
    from kubetune.operator.settings import from_env

    s3 = {"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}], "ports": [{"port": 9000}]}
    docs = render({"networkPolicy": {"enabled": True, "egress": [s3]}})
    env = {e["name"]: str(e["value"]) for e in container(docs)["env"] if "value" in e}
    pods = from_env(env).pods
    assert pods.network_policy is True and pods.network_egress == (s3,)
    assert any("networkpolicies" in r["resources"] for r in rules(docs))
    assert not any("networkpolicies" in r["resources"] for r in rules(render()))  # off: no right to them
    assert from_env({}).pods.network_policy is False


def test_replicas_peer_with_priorities_of_their_own():
    c = container(render({"replicaCount": 2}))
    pod_name = next(e for e in c["env"] if e["name"] == "KUBETUNE_POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # main.priority() reads it


def crd_schema() -> dict[str, Any]:
    return finetunejob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def strict(schema: Any) -> Any:
    """Unknown fields fail, as with kubectl's default server-side field validation (--validate=strict)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def validate_like_the_api_server(doc: dict[str, Any]) -> None:
    """OpenAPI v3.0 schemas are draft-4 JSON Schema (boolean exclusiveMaximum); x-kubernetes-* keys are ignored."""
    jsonschema.Draft4Validator(strict(crd_schema())).validate(doc)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "k8s").glob("finetunejob-*.yaml")), ids=lambda p: p.name)
def test_example_finetunejobs_pass_the_crd_schema(path: Path):
    doc = yaml.safe_load(path.read_text())
    validate_like_the_api_server(doc)


def test_the_crd_schema_refuses_a_bad_manifest():
    doc = yaml.safe_load((ROOT / "examples" / "k8s" / "finetunejob-cpu.yaml").read_text())
    doc["spec"]["nodes"] = 0
    with pytest.raises(jsonschema.ValidationError, match="minimum"):
        validate_like_the_api_server(doc)
    doc["spec"]["nodes"] = 1
    doc["spec"]["training"]["lora"]["rank"] = 8  # a typo for `r`
    with pytest.raises(jsonschema.ValidationError, match="rank"):
        validate_like_the_api_server(doc)


def test_examples_cover_every_backend():
    examples = (ROOT / "examples" / "k8s").glob("finetunejob-*.yaml")
    covered = {yaml.safe_load(p.read_text())["spec"]["backend"] for p in examples}
    assert covered == set(backends.NAMES)


def test_the_makefile_builds_an_image_per_backend():
    out = subprocess.run(["make", "-s", "images-dry-run"], cwd=ROOT, capture_output=True, text=True, check=True)
    built = set(re.findall(r"-f docker/Dockerfile\.([\w-]+)", out.stdout))
    assert built == {*backends.NAMES, "operator"}


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ({"operator": {"pollSeconds": 0.05}}, True),
        ({"operator": {"pollSeconds": 0.01}}, False),
        ({"operator": {"workerTerminationGracePeriodSeconds": 5}}, True),
        ({"operator": {"workerTerminationGracePeriodSeconds": 0}}, False),
    ],
)
def test_the_values_schema_and_the_operator_agree(values: dict[str, Any], accepted: bool):
    """What helm accepts the operator starts with, and what helm refuses the operator would refuse."""
    from kubetune.operator.settings import SettingsError, from_env

    with helm.Chart.load(str(CHART)) as chart:
        try:
            chart.validate_schema(values)
            helm_ok = True
        except Exception:
            helm_ok = False
    env = (
        {e["name"]: str(e["value"]) for e in container(render(values))["env"] if "value" in e}
        if helm_ok
        else {
            "KUBETUNE_POLL_SECONDS": str(values["operator"].get("pollSeconds", "")),
            "KUBETUNE_TERMINATION_GRACE_SECONDS": str(
                values["operator"].get("workerTerminationGracePeriodSeconds", "")
            ),
        }
    )
    try:
        from_env(env)
        operator_ok = True
    except SettingsError:
        operator_ok = False
    assert helm_ok is operator_ok is accepted


def test_values_yaml_defaults_are_the_operators_defaults():
    from kubetune.operator.settings import from_env

    env = {e["name"]: str(e["value"]) for e in container(render())["env"] if "value" in e}
    # The chart's defaults change nothing but the scope: the release namespace, where the bare operator (run
    # with a person's kubeconfig) serves every namespace.
    assert from_env(env) == replace(from_env({}), watch_namespaces=(RELEASE_NAMESPACE,))


def test_the_tmp_size_limit_reaches_the_operator_and_its_pods():
    from kubetune.api.finetunejob import FinetuneJobSpec
    from kubetune.operator.render import render_worker_job
    from kubetune.operator.settings import PodSettings, from_env

    def tmp_limit(values: dict[str, Any]) -> str:
        env = {e["name"]: str(e["value"]) for e in container(render(values))["env"] if "value" in e}
        spec = FinetuneJobSpec.model_validate(
            {"storage": {"model": {"claimName": "m"}, "data": {"claimName": "d"}, "output": {"claimName": "o"}}}
        )
        job = render_worker_job({"name": "j", "namespace": "ml", "uid": "u"}, spec, from_env(env).pods)
        (tmp,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
        return tmp["emptyDir"]["sizeLimit"]

    assert tmp_limit({}) == PodSettings().tmp_size  # the chart's default is the operator's
    assert tmp_limit({"operator": {"workerTmpSize": "40Gi"}}) == "40Gi"
