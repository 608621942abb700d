"""The initializer's pure builders: a `kubetune plan --preflight` Job (fetch into the cache, then plan), and what
its end means for status and for the workers' size."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import precision_modes
import pytest
import yaml
from typer.testing import CliRunner

from kubetune.api import load_config
from kubetune.api.contract import ExitCode, PlanEvent
from kubetune.api.finetunejob import FinetuneJobSpec, RemoteSources
from kubetune.operator import initializer as init
from kubetune.operator.observed import PodView
from kubetune.operator.render import CACHE_MOUNT, LABEL_ROLE, container_config
from kubetune.operator.settings import PodSettings

META = {"name": "llama-quotes", "namespace": "ml", "uid": "1234-abcd"}


def spec(training: dict[str, Any], **extra: Any) -> FinetuneJobSpec:
    storage = {"model": {"claimName": "models"}, "data": {"claimName": "data"}, "output": {"claimName": "runs"}}
    return FinetuneJobSpec.model_validate({"storage": storage, "training": training, **extra})


SOURCES = {"cache": {"claimName": "kubetune-cache"}, "s3CredentialsSecret": "s3"}
REMOTE = spec(
    {
        "model": {"path": "hf://org/llama@v1"},
        "data": {"path": ["s3://data/quotes/train.jsonl", "local.jsonl"]},
        "output": {"push_to": "s3://results/quotes"},
    },
    hfTokenSecret={"name": "hf"},
    sources=SOURCES,
)


FAILED = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
COMPLETE = {"status": {"conditions": [{"type": "Complete", "status": "True"}]}}


def ended(phase: str, exit_code: int | None, message: str | None) -> tuple[PodView, ...]:
    return (PodView("init-x", None, phase, "2026-11-22T10:00:00Z", exit_code, message),)


def test_a_local_run_plans_with_its_claims_read_only_and_its_workers_layout():
    local = spec({"data": {"path": ["train.jsonl"]}}, nodes=2, procsPerNode=4)
    job = init.render_initializer_job(META, local, PodSettings())
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["plan", "--preflight", "--json"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["KUBETUNE_NNODES"], env["KUBETUNE_NPROC_PER_NODE"]) == ("2", "4")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/model"]["readOnly"] and mounts["/data"]["readOnly"] and "/cache" not in mounts
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["model"] == "models" and claims["data"] == "data" and claims.get("scratch") is None
    assert container["resources"] == init.RESOURCES  # a small CPU pod, whatever the workers ask for
    kubernetes_validate.validate(job, "1.30", strict=True)
    limited = spec({"data": {"path": ["t.jsonl"]}}, resources={"limits": {"memory": "8Gi"}})
    args = init.render_initializer_job(META, limited, PodSettings())["spec"]["template"]["spec"]["containers"][0]
    assert args["args"] == ["plan", "--preflight", "--json", "--memory", str(8 * 2**30)]
    # Every quantity form the API server takes reaches the trainer as bytes (it reads sizes, not `8e9`).
    for given, want in (("8e9", "8000000000"), ("1.5Gi", str(3 * 2**29)), ("8G", "8000000000")):
        limited = spec({"data": {"path": ["t.jsonl"]}}, resources={"limits": {"memory": given}})
        job = init.render_initializer_job(META, limited, PodSettings())
        assert job["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--memory", want]


def test_the_initializer_job_fetches_into_the_cache_with_credentials_from_secrets():
    assert REMOTE.sources == RemoteSources.model_validate(SOURCES)
    job = init.render_initializer_job(META, REMOTE, PodSettings(image_pull_secrets=("registry",)))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["args"] == ["plan", "--preflight", "--json"]
    assert env["KUBETUNE_CACHE_DIR"] == CACHE_MOUNT and env["HF_TOKEN_FILE"] == "/secrets/hf/token"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]  # AWS_* keys, never in the spec
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cache"]["mountPath"] == "/cache" and not mounts["cache"]["readOnly"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["cache"] == "kubetune-cache" and claims["data"] == "data"  # local.jsonl is on the claim
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["automountServiceAccountToken"] is False
    assert job["metadata"]["ownerReferences"][0]["uid"] == META["uid"]
    assert job["metadata"]["labels"][LABEL_ROLE] == "initializer" and len(job["metadata"]["name"]) <= 63
    assert job["spec"]["backoffLimit"] == 1
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]  # a missing or denied source is not retried
    assert rule["action"] == "FailJob" and {10, 11, 2, 3, 4} <= set(rule["onExitCodes"]["values"])
    assert 12 not in rule["onExitCodes"]["values"]  # a cut transfer is: the next pod resumes it
    kubernetes_validate.validate(job, "1.30", strict=True)
    assert pod["imagePullSecrets"] == [{"name": "registry"}]  # placed like the workers: same image, same registry


def test_pods_keep_remote_paths_and_the_trainer_reads_them():
    cfg = container_config(REMOTE)
    assert cfg.model.path == "hf://org/llama@v1"
    assert cfg.data.path == ["s3://data/quotes/train.jsonl", "/data/local.jsonl"]
    assert cfg.output.push_to == "s3://results/quotes" and cfg.output_dir == "/output"
    again = load_config(yaml.safe_dump(cfg.model_dump(mode="json")), "config.yaml")  # what a pod parses
    assert again == cfg


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        (None, "pending"),
        ({"status": {"active": 1}}, "pending"),
        ({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "succeeded"),
    ],
)
def test_outcome_before_and_after_success(job, expected):
    assert init.initializer_outcome(job, ()).state == expected


def test_a_failed_fetch_ends_with_the_trainers_own_line(tmp_path, monkeypatch):
    """The seam: a real `kubetune fetch` failure's termination message becomes the status message."""
    from kubetune.trainer.cli import app

    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setenv("KUBETUNE_PROGRESS", "json")
    monkeypatch.setattr("kubetune.trainer.cli._setup_logging", lambda: None)
    result = CliRunner().invoke(app, ["fetch", "--model", "s3://Bad_Bucket/x"])
    assert result.exit_code == ExitCode.CONFIG
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    outcome = init.initializer_outcome(failed, ended("Failed", result.exit_code, log.read_text()))
    state, reason, message = outcome.state, outcome.reason, outcome.message
    assert (state, reason) == ("failed", "InvalidSpec")  # exit 2: a config, flag or location error
    assert message.startswith("--model: model.path: s3://Bad_Bucket/x:") and "bucket name" in message
    assert json.loads(log.read_text())["exit_code"] == ExitCode.CONFIG


def test_a_failed_fetch_without_last_words_keeps_the_job_controllers_message():
    failed = FAILED
    assert init.initializer_outcome(failed, ended("Failed", 137, None)) == init.Outcome(
        "failed", "InitializerFailed", "BackoffLimitExceeded"
    )
    assert init.initializer_outcome(failed, ended("Failed", 1, "3")).message == "BackoffLimitExceeded"  # not an event
    assert init.initializer_outcome({"status": None}, ()).state == "pending"  # a Job not yet given a status
    outcome = init.initializer_outcome(failed, ended("Failed", 10, "Traceback\nerror: s3://b/x: no such bucket\n"))
    assert (outcome.reason, outcome.message) == ("SourceNotFound", "error: s3://b/x: no such bucket")


def test_fetch_reasons_match_the_trainers_exit_codes():
    assert init.FETCH_REASONS == {
        ExitCode.CONFIG: "InvalidSpec",
        ExitCode.DATA: "InvalidData",
        ExitCode.MODEL: "InvalidModel",
        ExitCode.SOURCE_MISSING: "SourceNotFound",
        ExitCode.SOURCE_DENIED: "SourceAccessDenied",
        ExitCode.TRANSFER: "SourceTransferFailed",
    }


def test_result_location_comes_from_the_summary():
    from kubetune.api.contract import MergedEvent, SummaryEvent
    from kubetune.operator.reports import result_location

    assert result_location(SummaryEvent(pushed_to="s3://results/quotes")) == "s3://results/quotes"
    assert result_location(MergedEvent(merged_path="/output/merged", pushed_to="s3://r/q")) == "s3://r/q"
    assert result_location(SummaryEvent(steps=3)) is None and result_location(None) is None


def test_a_real_preflights_last_words_are_read_back_as_its_plan(tmp_path, monkeypatch, builtin_path):
    """The seam: `kubetune plan --preflight` writes the termination message, the operator reads its PlanEvent."""
    from tinymodel import save_tiny_llama

    from kubetune.trainer.cli import app

    model = save_tiny_llama(tmp_path / "model", builtin_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": "ok"}) + "\n" for i in range(6)))
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    monkeypatch.setattr("kubetune.trainer.cli._setup_logging", lambda: None)
    argv = ["plan", "--preflight", "--json", "--model", str(model), "--data", str(data), "--memory", "1Mi"]
    result = CliRunner().invoke(app, [*argv, "--batch-size", "2", "--max-steps", "3"])
    assert result.exit_code == 0, result.output[-2000:]
    outcome = init.initializer_outcome(COMPLETE, ended("Succeeded", 0, log.read_text()))
    assert outcome.state == "succeeded" and isinstance(outcome.plan, PlanEvent)
    assert outcome.plan.fits is False and outcome.plan.records == 6 and outcome.plan.steps == 3
    limited = spec({"data": {"path": ["d.jsonl"]}}, resources={"limits": {"memory": "1Mi"}})
    assert init.too_big(limited, outcome.plan).startswith(f"needs {init.gib(outcome.plan.peak_bytes)} per worker")
    summary = init.plan_summary(spec({"data": {"path": ["d.jsonl"]}}), outcome.plan)
    assert summary.peak_bytes_per_worker == outcome.plan.peak_bytes and summary.steps == 3
    # The limit: the headroom over the plan, rounded up, and the cpu backend's default 6Gi at least.
    assert summary.memory == f"{max(-(-outcome.plan.peak_bytes * 5 // 4 // 2**20), 6 * 1024)}Mi"
    # The merge's peak crosses the same seam, beyond the process itself (the base in fp32, reloaded once written).
    merge = outcome.plan.merge_peak_bytes
    assert merge is not None and merge > outcome.plan.memory["process"] and summary.merge_peak_bytes == merge
    assert summary.merge_memory == "6144Mi"  # a tiny model: the cpu backend's default limit is the floor


def test_a_plan_text_that_is_not_a_plan_event_is_no_plan():
    assert init.initializer_outcome(COMPLETE, ended("Succeeded", 0, "")).plan is None  # a pod that left nothing
    fetched = json.dumps({"event": "fetched", "sources": ["hf://org/x"]})
    assert init.initializer_outcome(COMPLETE, ended("Succeeded", 0, fetched)).plan is None


def preflight(tmp_path, monkeypatch, builtin_path, training: dict[str, Any], args: list[str]):
    """A real `kubetune plan --preflight` with the initializer's own args on a tiny model: exit code and log."""
    from tinymodel import save_tiny_llama

    from kubetune.trainer.cli import app

    model = save_tiny_llama(tmp_path / "model", builtin_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {i}", "completion": "ok"}) + "\n" for i in range(6)))
    config = tmp_path / "config.yaml"
    run = {"model": {"path": str(model)}, "data": {"path": [str(data)]}, "training": training}
    config.write_text(yaml.safe_dump({**run, "output_dir": str(tmp_path / "out")}))
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    # These cases are about the precision their config asks for: the suite's forced one would override it.
    monkeypatch.delenv(precision_modes.ENV, raising=False)
    monkeypatch.setattr("kubetune.trainer.cli._setup_logging", lambda: None)
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    return result, log.read_text()


@pytest.mark.parametrize(("backend", "device"), [("cuda", "cuda"), ("xpu", "xpu"), ("cuda", "auto")])
def test_on_an_accelerator_backend_the_cpu_initializer_plans_a_gpu_config(
    tmp_path, monkeypatch, builtin_path, backend, device
):
    """training.device: cuda and precision: fp16 are meant for the GPU workers; the initializer pod has no GPU and
    plans for its own CPU instead of failing with exit 2 (`cuda requested but torch sees no CUDA device`, or
    `fp16 training is not supported on CPU` with device auto)."""
    training = {"device": device, "precision": "fp16", "max_steps": 2, "batch_size": 2}
    gpu = spec({"data": {"path": ["d.jsonl"]}, "training": training}, backend=backend)
    (container,) = init.render_initializer_job(META, gpu, PodSettings())["spec"]["template"]["spec"]["containers"]
    result, words = preflight(tmp_path, monkeypatch, builtin_path, training, container["args"])
    assert result.exit_code == 0, result.output[-2000:]
    outcome = init.initializer_outcome(COMPLETE, ended("Succeeded", 0, words))
    assert isinstance(outcome.plan, PlanEvent) and outcome.plan.records == 6 and outcome.plan.steps == 2
    assert not init.acts_on_plan(gpu)  # advice only there: status.plan, sizing and refusal stay CPU-only
    cpu = spec({"data": {"path": ["d.jsonl"]}, "training": {"precision": "fp16"}})
    cpu_args = init.render_initializer_job(META, cpu, PodSettings())["spec"]["template"]["spec"]["containers"][0]
    failed, _ = preflight(tmp_path / "cpu", monkeypatch, builtin_path, {"precision": "fp16"}, cpu_args["args"])
    assert failed.exit_code == ExitCode.CONFIG  # on a CPU backend fp16 stays the config error it is


def test_the_initializer_gets_the_workers_memory_limit_when_it_is_larger():
    """It tokenizes the whole dataset: a run whose data needs a 64 GiB worker is not OOMKilled at 4 GiB first."""

    def resources(limits: dict[str, str] | None) -> dict[str, Any]:
        sized = spec({"data": {"path": ["t.jsonl"]}}, **({"resources": {"limits": limits}} if limits else {}))
        job = init.render_initializer_job(META, sized, PodSettings())
        kubernetes_validate.validate(job, "1.30", strict=True)
        return job["spec"]["template"]["spec"]["containers"][0]["resources"]

    assert resources({"memory": "64Gi"}) == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "64Gi"}}
    assert resources({"memory": "68719476736"})["limits"] == {"memory": "68719476736"}  # any quantity form
    assert resources({"memory": "2Gi"}) == init.RESOURCES  # a smaller worker limit: the initializer's own 4 GiB
    assert resources({"cpu": "4"}) == init.RESOURCES and resources(None) == init.RESOURCES


def test_a_given_limit_too_small_for_the_merge_is_refused_before_any_worker():
    """The merge Job runs under the same spec.resources: a limit that fits training but not the merge would OOM
    after training has finished, so it is refused up front, unless the merge is off or the plan is ignored."""
    limited = {"resources": {"limits": {"memory": "2Gi"}}}
    plan = PlanEvent(peak_bytes=2**30, batch_size=2, fits=True, merge_peak_bytes=3 * 2**30)
    message = init.too_big(spec({"data": {"path": ["t.jsonl"]}}, **limited), plan)
    assert message == (
        "the merge needs 3.0 GiB, spec.resources.limits.memory is 2Gi; give a larger limit or set merge.enabled: false"
    )
    assert init.too_big(spec({"data": {"path": ["t.jsonl"]}}, merge={"enabled": False}, **limited), plan) is None
    ignored = {"data": {"path": ["t.jsonl"]}, "training": {"ignore_plan": True}}
    assert init.too_big(spec(ignored, **limited), plan) is None
    fits = plan.model_copy(update={"merge_peak_bytes": 2**31})
    assert init.too_big(spec({"data": {"path": ["t.jsonl"]}}, **limited), fits) is None  # exactly the limit fits
    older = plan.model_copy(update={"merge_peak_bytes": None})  # an initializer without the merge plan
    assert init.too_big(spec({"data": {"path": ["t.jsonl"]}}, **limited), older) is None
