"""Fixtures for remote sources: a fresh cache per test, the local hub, and moto's S3 server (one per session)."""

from __future__ import annotations

import uuid

import pytest

CLEARED = ("HF_TOKEN", "HF_TOKEN_FILE", "HF_ENDPOINT", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test starts with an empty source cache and no credentials from the machine running it."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    root = tmp_path / "cache"
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(root))
    return root


@pytest.fixture
def hub(monkeypatch):
    from hubserver import Hub

    server = Hub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.stop()


@pytest.fixture
def s3(s3_store, monkeypatch):
    """The store's credentials in the environment, and a fresh bucket for this test."""
    for key, value in s3_store.env().items():
        monkeypatch.setenv(key, value)
    client = s3_store.client()
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return s3_store, client, bucket


@pytest.fixture
def proxy(s3, s3_store, monkeypatch):
    """A cutting proxy in front of moto; the trainer talks to the proxy."""
    from s3server import CutProxy

    p = CutProxy(s3_store.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, builtin_path):
    """A randomly initialised 1-layer Llama with the builtin's tokenizer: a real HF model directory of ~3 MB."""
    from tinymodel import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-model"), builtin_path)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from mlflowserver import MlflowServer, executable

    mlflow, why = executable()
    if mlflow is None:
        pytest.skip(why)
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), mlflow)
    try:
        yield server.wait()
    finally:
        server.stop()
