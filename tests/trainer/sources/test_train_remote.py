"""`kubetune train` / `kubetune merge` end to end with remote sources, push_to and trackers, against real servers.

The model is a 1-layer random Llama (~3 MB) uploaded to moto's S3; the data is a
dataset repo on the local hub; results go back to S3 (or the hub). Each run is a
real training process (a few steps), hence `slow`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.contract import MergedEvent, SummaryEvent, parse_event

ROOT = Path(__file__).resolve().parents[3]
DATES = (ROOT / "examples" / "data" / "dates" / "train.jsonl").read_text().splitlines(keepends=True)[:24]
TRAIN_FLAGS = ["--max-steps", "3", "--batch-size", "4", "--precision", "fp32", "--device", "cpu"]
TRAIN_SETS = ["--set", "training.logging_steps=1", "--set", "training.save_steps=100"]


def kubetune(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "KUBETUNE_LOG_LEVEL": "INFO", "KUBETUNE_PROGRESS": "json", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *args], env=full, capture_output=True, text=True, timeout=900
    )


def upload_dir(client, bucket: str, prefix: str, src: Path) -> None:
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(src).as_posix()}")


def manifest(client, bucket: str, key: str) -> dict:
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.mark.slow
def test_train_from_s3_and_the_hub_then_push_to_s3(s3, hub, tiny_model, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'kubetune-trainer[test-remote]'")
    _, client, bucket = s3
    upload_dir(client, bucket, "models/tiny", tiny_model)
    repo = hub.add("org/dates", {"train.jsonl": "".join(DATES).encode()}, repo_type="dataset")
    out = tmp_path / "out"
    report_to = "tensorboard"
    last_words = tmp_path / "termination-log"  # as in a pod: the file exists, the operator reads it
    last_words.touch()
    env = {"KUBETUNE_TERMINATION_LOG": str(last_words)}
    if _has_mlflow_client():  # a tracking server that is down: one warning, training goes on
        report_to += ",mlflow"
        env["MLFLOW_TRACKING_URI"] = "http://127.0.0.1:9"  # discard port: nothing listens
    result = kubetune(
        "train",
        *("--model", f"s3://{bucket}/models/tiny", "--data", "hf://org/dates", "--output-dir", str(out)),
        *TRAIN_FLAGS,
        *TRAIN_SETS,
        *("--set", f"training.report_to={report_to}", "--set", f"output.push_to=s3://{bucket}/results/run1"),
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if "mlflow" in report_to:
        warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "mlflow" in line]
        assert len(warnings) == 1 and "unreachable" in warnings[0], warnings

    summary = parse_event(last_words.read_text())
    assert isinstance(summary, SummaryEvent) and summary.pushed_to == f"s3://{bucket}/results/run1"

    run = json.loads((out / "run.json").read_text())
    model_src, data_src = run["sources"]
    assert model_src["source"] == f"s3://{bucket}/models/tiny" and model_src["files"] >= 3
    assert data_src["source"] == "hf://org/dates" and data_src["commit"] == repo.refs["main"]
    assert run["pushed"]["manifest"] == f"s3://{bucket}/results/run1/kubetune-push.json"

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert sorted({e.step for e in losses}) == [1, 2, 3] and all(e.value > 0 for e in losses)

    pushed = manifest(client, bucket, "results/run1/kubetune-push.json")["files"]
    assert {"run.json", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= set(pushed)
    for rel, meta in pushed.items():
        body = client.get_object(Bucket=bucket, Key=f"results/run1/{rel}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == meta["sha256"], rel

    merged = kubetune("merge", "--output-dir", str(out), env={"KUBETUNE_TERMINATION_LOG": str(last_words)})
    assert merged.returncode == 0, merged.stderr[-3000:]
    result = parse_event(last_words.read_text())
    assert isinstance(result, MergedEvent) and result.pushed_to == f"s3://{bucket}/results/run1"
    assert result.merged_path == str(out / "merged") and result.changed_tensors > 0
    pushed = manifest(client, bucket, "results/run1/kubetune-push.json")["files"]
    assert {"merged/config.json", "merged/model.safetensors", "adapter/adapter_config.json"} <= set(pushed)

    # The result is itself a source: a later run can start from the pushed merged model.
    from kubetune.trainer.sources import fetch

    again = Path(fetch(f"s3://{bucket}/results/run1/merged").local)
    assert (again / "model.safetensors").read_bytes() == (out / "merged" / "model.safetensors").read_bytes()


def _has_mlflow_client() -> bool:
    try:
        import mlflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_metrics_params_and_the_adapter_reach_a_real_mlflow_server(mlflow_server, tiny_model, tmp_path):
    from mlflow.tracking import MlflowClient

    data = tmp_path / "train.jsonl"
    data.write_text("".join(DATES))
    out = tmp_path / "mlrun"
    result = kubetune(
        "train",
        *("--model", str(tiny_model), "--data", str(data), "--output-dir", str(out)),
        *TRAIN_FLAGS,
        *TRAIN_SETS,
        *("--set", "training.report_to=mlflow", "--set", "tracking.run_name=remote-test", "--set", "training.lr=3e-4"),
        env={"MLFLOW_TRACKING_URI": mlflow_server.url},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = json.loads((out / "run.json").read_text())["tracking"]["mlflow"]["run_id"]

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.run_name == "remote-test" and run.info.status == "FINISHED"
    assert run.data.params["training.lr"] == "0.0003" and run.data.params["lora.r"] == "16"
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert run.data.metrics["summary.steps"] == 3 and "summary.final_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts


@pytest.mark.slow
def test_no_credential_in_run_json_logs_or_last_words_of_a_real_run(tiny_model, tmp_path):
    """Data behind a URL with userinfo and a signature, an MLflow URI with a password, a token in env, DEBUG logs."""
    from fileserver import FileServer

    web = FileServer()
    web.files["/d/train.jsonl"] = "".join(DATES).encode()
    host = web.url.removeprefix("http://")
    url = f"http://alice:url-pass-4242@{host}/d/train.jsonl?X-Amz-Signature=sig-0123456789"
    secrets = ("url-pass-4242", "sig-0123456789", "mlflow-pass-77", "hf_secretsecretsecretsecret")
    out, last_words = tmp_path / "out", tmp_path / "termination-log"
    last_words.touch()
    try:
        result = kubetune(
            "train",
            *("--model", str(tiny_model), "--data", url, "--output-dir", str(out)),
            *TRAIN_FLAGS,
            *TRAIN_SETS,
            *("--set", "tracking.mlflow_uri=http://bob:mlflow-pass-77@127.0.0.1:9"),
            env={
                "KUBETUNE_TERMINATION_LOG": str(last_words),
                "KUBETUNE_LOG_LEVEL": "DEBUG",
                "HF_TOKEN": "hf_secretsecretsecretsecret",
            },
        )
    finally:
        web.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    run_text = (out / "run.json").read_text()
    run = json.loads(run_text)
    assert run["sources"][0]["source"] == f"http://***@{host}/d/train.jsonl?X-Amz-Signature=***"
    assert run["config"]["tracking"]["mlflow_uri"] == "http://***@127.0.0.1:9"
    for secret in secrets:
        for where, text in (("run.json", run_text), ("stderr", result.stderr), ("stdout", result.stdout)):
            assert secret not in text, (secret, where)
        assert secret not in last_words.read_text(), secret
