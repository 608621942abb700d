"""output.push_to against moto's S3 and the local hub, and reading a pushed result back as a source."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kubetune.trainer.errors import SourceDenied, TransferFailed
from kubetune.trainer.push import MANIFEST, push
from kubetune.trainer.sources import fetch


def fake_output(out: Path, merged: bool = True, weights: bytes = b"w" * 1000) -> Path:
    """What a run leaves behind, with small stand-in files (the push does not look inside them)."""
    (out / "adapter").mkdir(parents=True, exist_ok=True)
    (out / "adapter" / "adapter_config.json").write_text('{"r": 4}')
    (out / "adapter" / "adapter_model.safetensors").write_bytes(weights)
    if merged:
        (out / "merged").mkdir(exist_ok=True)
        (out / "merged" / "config.json").write_text("{}")
        (out / "merged" / "model.safetensors").write_bytes(weights * 3)
    (out / "run.json").write_text('{"metrics": {}}')
    (out / "checkpoints").mkdir(exist_ok=True)
    (out / "checkpoints" / "never-pushed.bin").write_bytes(b"x")
    return out


def keys(client, bucket: str, prefix: str) -> set[str]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :] for o in listed}


def test_s3_push_writes_files_then_the_manifest(s3, tmp_path):
    _, client, bucket = s3
    out = fake_output(tmp_path / "out")
    result = push(out, f"s3://{bucket}/results/run1")
    assert result["manifest"] == f"s3://{bucket}/results/run1/{MANIFEST}" and result["files"] == 5
    stored = keys(client, bucket, "results/run1/")
    assert "checkpoints/never-pushed.bin" not in stored
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"results/run1/{MANIFEST}")["Body"].read())
    assert set(manifest["files"]) == stored - {MANIFEST}
    body = client.get_object(Bucket=bucket, Key="results/run1/merged/model.safetensors")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == manifest["files"]["merged/model.safetensors"]["sha256"]


def test_a_second_push_replaces_the_first_without_leftovers(s3, tmp_path):
    _, client, bucket = s3
    push(fake_output(tmp_path / "a"), f"s3://{bucket}/r")
    b = fake_output(tmp_path / "b", merged=False, weights=b"v" * 10)
    push(b, f"s3://{bucket}/r")
    assert keys(client, bucket, "r/") == {
        MANIFEST,
        "run.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
    }
    got = Path(fetch(f"s3://{bucket}/r/adapter").local)
    assert (got / "adapter_model.safetensors").read_bytes() == b"v" * 10


def test_a_reader_never_takes_a_result_without_its_manifest(s3, tmp_path):
    """Mid-push state: files there, manifest not yet (push deletes it first and writes it last)."""
    _, client, bucket = s3
    push(fake_output(tmp_path / "out"), f"s3://{bucket}/r")
    assert Path(fetch(f"s3://{bucket}/r/merged").local, "config.json").read_text() == "{}"
    client.delete_object(Bucket=bucket, Key=f"r/{MANIFEST}")
    with pytest.raises(TransferFailed, match="push is in progress or was cut"):
        fetch(f"s3://{bucket}/r/merged")


def test_a_pushed_file_that_does_not_match_the_manifest_is_rejected(s3, tmp_path):
    _, client, bucket = s3
    push(fake_output(tmp_path / "out"), f"s3://{bucket}/r")
    client.put_object(Bucket=bucket, Key="r/merged/config.json", Body=b'{"tampered": 1}')
    with pytest.raises(TransferFailed, match="corrupt"):
        fetch(f"s3://{bucket}/r/merged")


def test_s3_push_with_wrong_credentials_is_denied(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    with pytest.raises(SourceDenied, match=r"output\.push_to"):
        push(fake_output(tmp_path / "out"), f"s3://{s3[2]}/r")


def test_hf_push_is_one_commit_with_everything(hub, tmp_path, monkeypatch):
    out = fake_output(tmp_path / "out")
    with pytest.raises(SourceDenied, match="needs HF_TOKEN"):
        push(out, "hf://org/result")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    result = push(out, "hf://org/result")
    repo = hub.repos[("model", "org/result")]
    files = repo.commits[result["commit"]]
    assert repo.refs["main"] == result["commit"]
    assert {"adapter/adapter_config.json", "merged/model.safetensors", "run.json"} <= set(files)
    assert files["merged/model.safetensors"] == b"w" * 3000
    assert len(repo.commits) == 2  # the repo's creation, then one commit with every file
    back = fetch("hf://org/result/merged")
    assert Path(back.local, "model.safetensors").read_bytes() == b"w" * 3000


def test_hf_push_with_a_wrong_token_is_denied(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(SourceDenied):
        push(fake_output(tmp_path / "out"), "hf://org/result")


def test_gguf_files_go_out_with_their_merged_model_only(s3, tmp_path):
    _, client, bucket = s3
    out = fake_output(tmp_path / "out")
    (out / "gguf").mkdir()
    (out / "gguf" / "model-q8_0.gguf").write_bytes(b"GGUF" + b"q" * 100)
    (out / "gguf" / "model-q8_0.Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    push(out, f"s3://{bucket}/g")
    assert {"gguf/model-q8_0.gguf", "gguf/model-q8_0.Modelfile"} <= keys(client, bucket, "g/")
    # Without merged/ (a new adapter dropped it), the gguf/ left behind was made from another adapter.
    stale = fake_output(tmp_path / "stale", merged=False)
    (stale / "gguf").mkdir()
    (stale / "gguf" / "model-q8_0.gguf").write_bytes(b"GGUF-old")
    push(stale, f"s3://{bucket}/h")
    assert not any(k.startswith("gguf/") for k in keys(client, bucket, "h/"))
