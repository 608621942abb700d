"""Renderers, spec in and manifest out, checked against the trainer's own contract (no cluster)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api import backends, contract, load_config
from kubetune.api.finetunejob import FinetuneJobSpec, SecretKeyRef
from kubetune.operator.render import (
    Names,
    render_configmap,
    render_merge_job,
    render_service,
    render_worker_job,
    short_name,
)
from kubetune.operator.settings import PodSettings
from kubetune.trainer.launch import layout_from_env

META = {"name": "llama-quotes", "namespace": "ml", "uid": "1234-abcd"}
SPEC = FinetuneJobSpec.model_validate(
    {
        "backend": "cpu",
        "nodes": 2,
        "procsPerNode": 4,
        "storage": {
            "model": {"claimName": "models", "subPath": "llama-2-7b"},
            "data": {"claimName": "data"},
            "output": {"claimName": "runs", "subPath": "quotes"},
        },
        "training": {"data": {"path": ["train.jsonl"], "eval_path": ["/data/eval.jsonl"]}, "lora": {"r": 8}},
        "scheduling": {"queueName": "team-a", "nodeSelector": {"pool": "xeon"}},
        "hfTokenSecret": {"name": "hf"},
    }
)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(job)["env"]}


def test_worker_env_is_the_trainers_contract():
    job = render_worker_job(META, SPEC, PodSettings())
    env = env_of(job)
    names = Names.of("llama-quotes")
    assert env["MASTER_ADDR"] == f"{names.workers}-0.{names.service}"
    for index in range(SPEC.nodes):  # the Job controller sets JOB_COMPLETION_INDEX per pod
        layout = layout_from_env({**env, "JOB_COMPLETION_INDEX": str(index)})
        assert (layout.nnodes, layout.nproc_per_node, layout.node_rank, layout.world_size) == (2, 4, index, 8)
    assert env["KUBETUNE_CONFIG"] == "/config/config.yaml"
    assert "HF_TOKEN_FILE" not in env  # local model and data, no hf:// push: the token has no use here


def test_config_map_is_a_valid_trainer_config_pointing_at_the_mounts():
    cm = render_configmap(META, SPEC)
    cfg = load_config(cm["data"]["config.yaml"], "config.yaml")
    assert cfg.model.path == "/model" and cfg.output_dir == "/output"
    assert cfg.data.path == ["/data/train.jsonl"] and cfg.data.eval_path == ["/data/eval.jsonl"]
    assert cfg.lora.r == 8
    assert yaml.safe_load(cm["data"]["config.yaml"])["lora"]["r"] == 8


def test_indexed_job_shape_and_failure_policy():
    spec = SPEC.model_copy(update={"run_policy": SPEC.run_policy.model_copy(update={"active_deadline_seconds": 3600})})
    job = render_worker_job(META, spec, PodSettings())["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 2, 2)
    assert job["backoffLimit"] == 3 and job["activeDeadlineSeconds"] == 3600
    assert job["suspend"] is True  # queued (scheduling.queueName): created suspended, Kueue admits it
    unqueued = spec.model_copy(update={"scheduling": spec.scheduling.model_copy(update={"queue_name": None})})
    assert render_worker_job(META, unqueued, PodSettings())["spec"]["suspend"] is False
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [75]}} in rules
    fail = next(r for r in rules if r["action"] == "FailJob")["onExitCodes"]
    assert fail["values"] == sorted(int(c) for c in contract.PERMANENT_EXIT_CODES)
    assert {2, 3, 4, 5, 10, 11} <= set(fail["values"])  # bad config, data, model; diverged; source missing or denied
    assert 12 not in fail["values"] and 1 not in fail["values"]  # a cut transfer or a crash may pass on retry
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    assert job["template"]["spec"]["subdomain"] == Names.of("llama-quotes").service
    assert job["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_mounts_read_only_where_they_should_be():
    pod = render_worker_job(META, SPEC, PodSettings())["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in container({"spec": {"template": {"spec": pod}}})["volumeMounts"]}
    assert mounts["/model"]["readOnly"] and mounts["/data"]["readOnly"] and not mounts["/output"]["readOnly"]
    assert mounts["/model"]["subPath"] == "llama-2-7b" and mounts["/output"]["subPath"] == "quotes"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory" and "/dev/shm" in mounts and "/tmp" in mounts


@pytest.mark.parametrize("render", [render_worker_job, render_merge_job])
def test_pods_meet_the_restricted_pod_security_standard(render):
    pod = render(META, SPEC, PodSettings())["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"  # no chown of every file per start
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] >= 300  # room for the SIGTERM checkpoint


@pytest.mark.parametrize(
    ("backend", "key", "value"),
    [("cpu", "cpu", "1"), ("xpu", "gpu.intel.com/i915", "1"), ("cuda", "nvidia.com/gpu", "1")],
)
def test_resources_and_image_per_backend(backend, key, value):
    spec = SPEC.model_copy(update={"backend": backend})
    c = container(render_worker_job(META, spec, PodSettings()))
    assert value in (c["resources"]["requests"].get(key), c["resources"]["limits"].get(key))
    assert c["image"] == PodSettings().images[backend]
    override = SPEC.model_copy(update={"backend": backend, "image": "registry.local/trainer:x"})
    assert container(render_worker_job(META, override, PodSettings()))["image"] == "registry.local/trainer:x"


def test_every_child_is_owned_and_labelled():
    children = [
        render_configmap(META, SPEC),
        render_service(META),
        render_worker_job(META, SPEC, PodSettings()),
        render_merge_job(META, SPEC, PodSettings()),
    ]
    for child in children:
        ref = child["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "FinetuneJob",
            "llama-quotes",
            "1234-abcd",
            True,
        )
        assert child["metadata"]["namespace"] == "ml"
        assert child["metadata"]["labels"]["kubetune.dev/finetunejob"] == "llama-quotes"
    assert render_service(META)["spec"]["clusterIP"] == "None"


def test_merge_job_runs_merge_without_the_data_volume():
    job = render_merge_job(META, SPEC, PodSettings())
    assert container(job)["args"] == ["merge", "--output-dir", "/output"]
    assert "data" not in {v["name"] for v in job["spec"]["template"]["spec"]["volumes"]}


def test_names_stay_within_kubernetes_limits():
    long = "a" * 80
    names = Names.of(long)
    assert all(len(n) <= 63 for n in (names.config, names.service, names.merge))
    assert len(names.workers) <= 59  # + "-<index>" for pod hostnames
    assert short_name(long, "workers") != short_name("a" * 81, "workers")  # hashes keep them distinct
    assert Names.of("short").workers == "short-workers"


@pytest.mark.parametrize("backend", backends.NAMES)
def test_rendered_manifests_validate_against_kubernetes_schemas(backend):
    spec = SPEC.model_copy(update={"backend": backend})
    for manifest in (
        render_configmap(META, spec),
        render_service(META),
        render_worker_job(META, spec, PodSettings()),
        render_merge_job(META, spec, PodSettings()),
    ):
        kubernetes_validate.validate(manifest, "1.30", strict=True)


@pytest.mark.parametrize("name", ["q" * 63, "a", "x-" * 31 + "y"])
def test_names_at_the_limits_give_children_the_api_server_accepts(name: str):
    # The server's rules (tests/support/kube.py, written from the Kubernetes docs), not the renderer's own.
    from kube import object_problems

    meta = {**META, "name": name}
    spec = SPEC.model_copy(update={"nodes": 256})  # the largest index: pod hostnames <workers>-255
    for manifest in (
        render_configmap(meta, spec),
        render_service(meta),
        render_worker_job(meta, spec, PodSettings()),
        render_merge_job(meta, spec, PodSettings()),
    ):
        assert object_problems(manifest) == [], manifest["kind"]
        kubernetes_validate.validate(manifest, "1.30", strict=True)


def test_the_rules_refuse_what_the_api_server_refuses():
    from kube import object_problems

    service = render_service({**META, "name": "quotes"})
    assert object_problems({**service, "metadata": {**service["metadata"], "name": "1quotes"}})  # RFC 1035
    assert object_problems({**service, "metadata": {**service["metadata"], "labels": {"a": "v" * 64}}})
    job = render_worker_job({**META, "name": "q" * 70}, SPEC, PodSettings())
    too_long = {**job, "metadata": {**job["metadata"], "name": "q" * 64}}
    assert any("no more than 63" in p for p in object_problems(too_long))


def test_trainer_pods_get_the_pull_secrets():
    settings = PodSettings(image_pull_secrets=("regcred",))
    for job in (render_worker_job(META, SPEC, settings), render_merge_job(META, SPEC, settings)):
        assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert "imagePullSecrets" not in render_worker_job(META, SPEC, PodSettings())["spec"]["template"]["spec"]


REMOTE = FinetuneJobSpec.model_validate(
    {
        "storage": {"output": {"claimName": "runs", "subPath": "quotes"}},
        "sources": {"cache": {"claimName": "kubetune-cache", "subPath": "shared"}, "s3CredentialsSecret": "s3"},
        "training": {
            "model": {"path": "s3://models/llama"},
            "data": {"path": ["hf://datasets/org/quotes@v2/train.jsonl"]},
            "output": {"push_to": "s3://results/quotes"},
        },
        "hfTokenSecret": {"name": "hf"},
    }
)


@pytest.mark.parametrize("render", [render_worker_job, render_merge_job])
def test_workers_and_merge_read_the_cache_read_only_through_the_initializers_lock(render):
    job = render(META, REMOTE, PodSettings())
    pod, c = job["spec"]["template"]["spec"], container(job)
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert claims == {"output": "runs", "cache": "kubetune-cache"}  # no model or data claim: both are remote
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    # Read-only: with the lock they only hash what the initializer fetched (issue 22 #3).
    assert mounts["cache"] == {"name": "cache", "mountPath": "/cache", "readOnly": True, "subPath": "shared"}
    env = env_of(job)
    assert env["KUBETUNE_CACHE_DIR"] == "/cache" and env[contract.ENV_SOURCES_LOCK] == META["uid"]
    # They push to s3://: the S3 Secret; the HF token only serves hf:// sources, which the initializer fetched.
    assert c["envFrom"] == [{"secretRef": {"name": "s3"}}] and contract.ENV_HF_TOKEN_FILE not in env
    assert not any(v["name"] == "hf-token" for v in pod["volumes"])
    kubernetes_validate.validate(job, "1.30", strict=True)
    local = render(META, SPEC, PodSettings())  # local paths: no cache, no credentials
    assert "envFrom" not in container(local) and "KUBETUNE_CACHE_DIR" not in env_of(local)
    assert contract.ENV_SOURCES_LOCK not in env_of(local)
    assert not any(v["name"] == "cache" for v in local["spec"]["template"]["spec"]["volumes"])


def test_only_pods_that_push_get_the_push_targets_credentials():
    from kubetune.operator.initializer import render_initializer_job

    no_push = REMOTE.model_copy(deep=True)
    no_push.training.output.push_to = None
    for render in (render_worker_job, render_merge_job):
        c = container(render(META, no_push, PodSettings()))
        assert "envFrom" not in c and contract.ENV_HF_TOKEN_FILE not in env_of(render(META, no_push, PodSettings()))
    to_hf = REMOTE.model_copy(deep=True)
    to_hf.training.output.push_to = "hf://org/quotes-adapter"
    for render in (render_worker_job, render_merge_job):
        job = render(META, to_hf, PodSettings())
        assert env_of(job)[contract.ENV_HF_TOKEN_FILE] == "/secrets/hf/token" and "envFrom" not in container(job)
    fetch = render_initializer_job(META, no_push, PodSettings())  # fetches: every source credential, cache writable
    assert container(fetch)["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert env_of(fetch)[contract.ENV_HF_TOKEN_FILE] == "/secrets/hf/token"
    assert env_of(fetch)[contract.ENV_SOURCES_LOCK] == META["uid"]
    assert {m["name"]: m.get("readOnly") for m in container(fetch)["volumeMounts"]}["cache"] is False


def test_private_https_sources_get_the_token_file_in_the_initializer_only():
    from kubetune.operator.initializer import render_initializer_job

    spec = REMOTE.model_copy(update={"http_token_secret": SecretKeyRef(name="web", key="bearer")})
    fetch = render_initializer_job(META, spec, PodSettings())
    path = env_of(fetch)[contract.ENV_HTTP_TOKEN_FILE]
    mount = next(m for m in container(fetch)["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in fetch["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["secret"] == {
        "secretName": "web",
        "items": [{"key": "bearer", "path": "token"}],
    }
    assert path == f"{mount['mountPath']}/token"
    kubernetes_validate.validate(fetch, "1.30", strict=True)
    for render in (render_worker_job, render_merge_job):  # they read offline: no source asked, no token
        assert contract.ENV_HTTP_TOKEN_FILE not in env_of(render(META, spec, PodSettings()))


@pytest.mark.parametrize("role", ["worker", "merge", "initializer"])
def test_tmp_is_bounded_by_the_settings(role):
    from kubetune.operator.initializer import render_initializer_job

    render = {"worker": render_worker_job, "merge": render_merge_job, "initializer": render_initializer_job}[role]
    for settings, size in ((PodSettings(), PodSettings().tmp_size), (PodSettings(tmp_size="3Gi"), "3Gi")):
        volumes = {v["name"]: v for v in render(META, REMOTE, settings)["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": size}}
    assert PodSettings().tmp_size


def _writable_mount_of(job: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The pod's writable emptyDir mount that holds `path`, if any (the root filesystem is read-only)."""
    spec = job["spec"]["template"]["spec"]
    scratch = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = [m for m in container(job)["volumeMounts"] if m["name"] in scratch and not m.get("readOnly")]
    return next((m for m in mounts if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")), None)


@pytest.mark.parametrize("role", ["worker", "merge", "initializer"])
def test_home_and_every_library_cache_are_on_the_pods_writable_tmp(role):
    # HOME is on the read-only root filesystem: Triton, the CUDA driver, HF and kubetune's builtin export would
    # fail writing ~/.triton, ~/.nv, ~/.cache (issue 21); a custom spec.image brings none of the images' ENV.
    from kubetune.operator.initializer import render_initializer_job

    render = {"worker": render_worker_job, "merge": render_merge_job, "initializer": render_initializer_job}[role]
    for spec in (SPEC, REMOTE, SPEC.model_copy(update={"image": "registry.example/own-trainer:1"})):
        job = render(META, spec, PodSettings())
        env = env_of(job)
        for key in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH"):
            assert key in env, key
        for key in contract.CACHE_ENV:
            mount = _writable_mount_of(job, env[key])
            assert mount is not None and mount["mountPath"] == contract.WRITABLE_DIR, (key, env[key])


def test_the_libraries_put_their_caches_where_the_pod_env_says():
    # The real libraries read the rendered env: nothing resolves to the image user's HOME on the read-only root.
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in env_of(render_worker_job(META, SPEC, PodSettings())).items() if k in contract.CACHE_ENV}
    probe = (
        "import json, pathlib, huggingface_hub.constants as hf;"
        "from torch._inductor.runtime.cache_dir_utils import cache_dir;"
        "from kubetune.trainer.models import cache_dir as kubetune_cache;"
        "print(json.dumps([str(pathlib.Path.home()), hf.HF_HUB_CACHE, cache_dir(), str(kubetune_cache())]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in contract.CACHE_ENV and k != contract.ENV_CACHE_DIR}
    out = subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    paths = json.loads(out.stdout)
    inside = contract.WRITABLE_DIR + "/"
    assert all(p == contract.WRITABLE_DIR or p.startswith(inside) for p in paths), paths


def test_the_config_keeps_remote_paths_and_push_to_for_the_trainer():
    cm = render_configmap(META, REMOTE)
    cfg = load_config(cm["data"]["config.yaml"], "config.yaml")  # what the pods parse
    assert cfg.model.path == "s3://models/llama" and cfg.data.path == ["hf://datasets/org/quotes@v2/train.jsonl"]
    assert cfg.output.push_to == "s3://results/quotes" and cfg.output_dir == "/output"


@pytest.mark.parametrize("role", ["worker", "merge", "initializer"])
def test_pods_get_no_service_links_from_the_namespace(role):
    # The kubelet would inject KUBETUNE_METRICS_* for the chart's Service into every pod of a namespaced install.
    from kubelet import pod_env

    from kubetune.operator.initializer import render_initializer_job

    render = {
        "worker": lambda: render_worker_job(META, REMOTE, PodSettings()),
        "merge": lambda: render_merge_job(META, REMOTE, PodSettings()),
        "initializer": lambda: render_initializer_job(META, REMOTE, PodSettings()),
    }[role]
    job = render()
    metrics = {
        "metadata": {"name": "kubetune-metrics"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "metrics", "port": 9090}]},
    }
    env = pod_env(job["spec"]["template"]["spec"], [metrics], {}, env_of(job))
    assert not [k for k in env if k.startswith("KUBETUNE_METRICS")]
    cfg = load_config(render_configmap(META, REMOTE)["data"]["config.yaml"], "config.yaml", environ=env)
    assert cfg.model.path == "s3://models/llama"


@pytest.mark.parametrize("role", ["worker", "merge", "initializer"])
def test_every_job_of_a_queued_spec_is_queued_on_the_job_itself(role):
    # Kueue reads kueue.x-k8s.io/queue-name on the Job (kueue.sigs.k8s.io/docs/tasks/run/jobs): a label on the
    # pod template only lets the merge pod (a GPU on cuda) run outside the queue's quota.
    from kubetune.operator.initializer import render_initializer_job

    queued = REMOTE.model_copy(update={"scheduling": REMOTE.scheduling.model_copy(update={"queue_name": "team-a"})})
    job = {
        "worker": lambda: render_worker_job(META, queued, PodSettings()),
        "merge": lambda: render_merge_job(META, queued, PodSettings()),
        "initializer": lambda: render_initializer_job(META, queued, PodSettings()),
    }[role]()
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


def test_the_rendezvous_service_selects_this_runs_workers_only():
    service = render_service(META)
    workers = render_worker_job(META, SPEC, PodSettings())["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector["kubetune.dev/run"] == META["uid"]
    assert all(workers.get(k) == v for k, v in selector.items())  # this run's worker pods match it
    again = render_worker_job({**META, "uid": "a-new-run"}, SPEC, PodSettings())["spec"]["template"]["metadata"]
    assert not all(again["labels"].get(k) == v for k, v in selector.items())  # a re-applied run's pods do not


def test_the_network_policy_admits_only_the_same_run_and_validates():
    from kubetune.operator.render import render_network_policy

    policy = render_network_policy(META, PodSettings(network_policy=True))
    kubernetes_validate.validate(policy, "1.30", strict=True)
    run = {"matchLabels": {"kubetune.dev/run": META["uid"]}}
    assert policy["spec"]["podSelector"] == run and policy["spec"]["ingress"] == [{"from": [{"podSelector": run}]}]
    assert policy["spec"]["egress"] == [{}]  # no egress rules given: anywhere (hubs, S3)
    s3 = {"to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}], "ports": [{"port": 9000}]}
    narrow = render_network_policy(META, PodSettings(network_policy=True, network_egress=(s3,)))
    kubernetes_validate.validate(narrow, "1.30", strict=True)
    assert narrow["spec"]["egress"][0] == {"to": [{"podSelector": run}]} and narrow["spec"]["egress"][-1] == s3
    assert any({"protocol": "UDP", "port": 53} in r.get("ports", []) for r in narrow["spec"]["egress"])  # DNS
    pods = render_worker_job(META, SPEC, PodSettings())["spec"]["template"]["metadata"]["labels"]
    assert all(pods.get(k) == v for k, v in run["matchLabels"].items())  # the workers are selected
