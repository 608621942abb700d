"""Fetched once: `kubetune fetch` locks what each source resolved to; workers train on exactly that, offline.

Against the local hub, moto (behind a counting proxy) and the file server: the sources
change after the initializer ran, and a worker started with KUBETUNE_SOURCES_LOCK still
gets the initializer's bytes, without one request to any source; a tampered cache file
is refused rather than trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.config import TrainConfig
from kubetune.api.contract import ExitCode
from kubetune.trainer.errors import TransferFailed
from kubetune.trainer.sources import fetch_all, localize, lock_path


def config(model: str, *data: str) -> TrainConfig:
    return TrainConfig.model_validate({"model": {"path": model}, "data": {"path": list(data)}})


@pytest.fixture
def web():
    from fileserver import FileServer

    server = FileServer()
    yield server
    server.stop()


def test_workers_train_on_what_the_initializer_fetched_even_after_the_sources_moved(hub, s3, proxy, web, monkeypatch):
    _, client, bucket = s3
    repo = hub.add("org/tiny", {"config.json": b'{"v": 1}'})
    client.put_object(Bucket=bucket, Key="d/train.jsonl", Body=b'{"text": "v1"}\n')
    web.files["/e/eval.jsonl"] = b'{"text": "e1"}\n'
    cfg = config("hf://org/tiny", f"s3://{bucket}/d/train.jsonl", f"{web.url}/e/eval.jsonl")
    monkeypatch.setenv("KUBETUNE_SOURCES_LOCK", "job-1234")
    records = fetch_all(cfg)  # the initializer
    assert lock_path().is_file() and records[0]["commit"] == repo.refs["main"]

    repo.commit({"config.json": b'{"v": 2}'})  # every source changes before the workers start
    client.put_object(Bucket=bucket, Key="d/train.jsonl", Body=b'{"text": "v2"}\n')
    web.files["/e/eval.jsonl"] = b'{"text": "e2"}\n'
    asked = len(hub.requests), len(proxy.methods), len(web.ranges) + len(web.authorization)

    local, fetched = localize(cfg)  # a worker
    assert Path(local.model.path, "config.json").read_bytes() == b'{"v": 1}'
    assert [Path(p).read_bytes() for p in local.data.path] == [b'{"text": "v1"}\n', b'{"text": "e1"}\n']
    assert (len(hub.requests), len(proxy.methods), len(web.ranges) + len(web.authorization)) == asked
    assert fetched[0]["commit"] == records[0]["commit"] and all(r["locked"] for r in fetched)

    monkeypatch.delenv("KUBETUNE_SOURCES_LOCK")  # without a lock: resolved again, the new versions
    fresh, _ = localize(cfg)
    assert Path(fresh.model.path, "config.json").read_bytes() == b'{"v": 2}'


@pytest.mark.parametrize("which", ["hf", "s3"])
def test_a_locked_file_tampered_with_in_the_cache_is_refused(hub, s3, monkeypatch, which):
    _, client, bucket = s3
    hub.add("org/tiny", {"config.json": b'{"v": 1}'})
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"v": 1}')
    location = "hf://org/tiny" if which == "hf" else f"s3://{bucket}/m"
    monkeypatch.setenv("KUBETUNE_SOURCES_LOCK", "job-77")
    fetch_all(config(location))
    local, _ = localize(config(location))
    target = Path(local.model.path, "config.json")
    target.unlink()  # a co-tenant swaps the file (a link, for hf) for one of their own
    target.write_bytes(b'{"v": 666}')
    with pytest.raises(TransferFailed, match="kubetune fetch") as exc:
        localize(config(location))
    assert exc.value.exit_code == ExitCode.TRANSFER


def test_the_lock_holds_no_credential_and_names_sources_by_digest(web, monkeypatch):
    web.files["/d/t.jsonl"] = b'{"text": "a"}\n'
    url = f"http://u:pw-in-url-123@{web.url.removeprefix('http://')}/d/t.jsonl?X-Amz-Signature=sig-456789"
    monkeypatch.setenv("KUBETUNE_SOURCES_LOCK", "job-9")
    fetch_all(config("builtin:smollm2-135m-instruct", url))
    text = lock_path().read_text()
    assert "pw-in-url-123" not in text and "sig-456789" not in text
    local, _ = localize(config("builtin:smollm2-135m-instruct", url))
    assert Path(local.data.path[0]).read_bytes() == b'{"text": "a"}\n'
    assert json.loads(text)["sources"]  # one entry, keyed by a digest of the location
