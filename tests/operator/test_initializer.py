"""The initializer's pure builders: a `kubetune fetch` Job into the cache claim, and what its end means for status."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from kubetune.api import load_config
from kubetune.api.contract import ExitCode
from kubetune.api.finetunejob import FinetuneJobSpec, RemoteSources
from kubetune.operator import initializer as init
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


def test_only_remote_sources_need_an_initializer():
    assert REMOTE.remote_locations() == ["hf://org/llama@v1", "s3://data/quotes/train.jsonl"]
    assert init.needs_initializer(REMOTE)
    assert not init.needs_initializer(spec({"data": {"path": ["train.jsonl"]}}))


def test_the_initializer_job_runs_fetch_into_the_cache_with_credentials_from_secrets():
    assert REMOTE.sources == RemoteSources.model_validate(SOURCES)
    job = init.render_initializer_job(META, REMOTE, PodSettings(image_pull_secrets=("registry",)))
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["args"] == ["fetch"]
    assert env["KUBETUNE_CACHE_DIR"] == CACHE_MOUNT and env["HF_TOKEN_FILE"] == "/secrets/hf/token"
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]  # AWS_* keys, never in the spec
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["cache"]["mountPath"] == "/cache" and not mounts["cache"]["readOnly"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["cache"] == "kubetune-cache" and "model" not in claims and "data" not in claims
    assert container["securityContext"]["readOnlyRootFilesystem"] and pod["automountServiceAccountToken"] is False
    assert job["metadata"]["ownerReferences"][0]["uid"] == META["uid"]
    assert job["metadata"]["labels"][LABEL_ROLE] == "initializer" and len(job["metadata"]["name"]) <= 63
    assert job["spec"]["backoffLimit"] == 1
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]  # a missing or denied source is not retried
    assert rule["action"] == "FailJob" and {10, 11, 2} <= set(rule["onExitCodes"]["values"])
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
    assert init.initializer_outcome(job, None, None)[0] == expected


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
    state, reason, message = init.initializer_outcome(failed, result.exit_code, log.read_text())
    assert (state, reason) == ("failed", "InvalidSource")
    assert message.startswith("--model: model.path: s3://Bad_Bucket/x:") and "bucket name" in message
    assert json.loads(log.read_text())["exit_code"] == ExitCode.CONFIG


def test_a_failed_fetch_without_last_words_keeps_the_job_controllers_message():
    failed = {"status": {"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}}
    assert init.initializer_outcome(failed, 137, None) == ("failed", "InitializerFailed", "BackoffLimitExceeded")
    assert init.initializer_outcome(failed, 1, "3")[2] == "BackoffLimitExceeded"  # JSON, but not an event
    assert init.initializer_outcome({"status": None}, None, None)[0] == "pending"  # a Job not yet given a status
    assert init.initializer_outcome(failed, 10, "Traceback\nerror: s3://b/x: no such bucket\n")[1:] == (
        "SourceNotFound",
        "error: s3://b/x: no such bucket",
    )


def test_fetch_reasons_match_the_trainers_exit_codes():
    assert init.FETCH_REASONS == {
        ExitCode.CONFIG: "InvalidSource",
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
