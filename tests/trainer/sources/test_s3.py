"""s3:// sources against moto's standalone S3 server on 127.0.0.1, with IAM auth enforced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune.api.contract import ExitCode
from kubetune.trainer.errors import SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import fetch, store

WEIGHTS = os.urandom(300_000)


def put(client, bucket: str, files: dict[str, bytes]) -> None:
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def gets(proxy, key_suffix: str) -> list[str | None]:
    """Range headers of the object GETs the proxy forwarded for keys ending in key_suffix."""
    return [rng for path, rng in proxy.ranges if path.endswith(key_suffix) and "?" not in path]


def test_a_prefix_is_fetched_with_its_layout_and_reused(s3, proxy):
    _, client, bucket = s3
    put(client, bucket, {"tiny/config.json": b"{}", "tiny/model.safetensors": WEIGHTS, "tiny/sub/extra.txt": b"x"})
    first = fetch(f"s3://{bucket}/tiny", "model")
    local = Path(first.local)
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == [
        "config.json",
        "model.safetensors",
        "sub/extra.txt",
    ]
    assert (local / "model.safetensors").read_bytes() == WEIGHTS
    assert first.record["files"] == 3 and first.record["bytes"] == 300_003 and first.record["revision"]
    downloads = len(gets(proxy, "/tiny/model.safetensors"))
    second = fetch(f"s3://{bucket}/tiny/", "model")
    assert second.local == first.local and second.record["revision"] == first.record["revision"]
    assert len(gets(proxy, "/tiny/model.safetensors")) == downloads  # HEAD/list only, no second download


def test_one_object_is_one_file(s3):
    _, client, bucket = s3
    put(client, bucket, {"data/train.jsonl": b'{"text": "a"}\n', "data/other.jsonl": b"{}\n"})
    got = fetch(f"s3://{bucket}/data/train.jsonl", "data")
    assert Path(got.local).name == "train.jsonl" and Path(got.local).read_bytes() == b'{"text": "a"}\n'
    assert got.record["files"] == 1


def test_a_changed_object_is_fetched_again(s3):
    _, client, bucket = s3
    put(client, bucket, {"m/config.json": b"{}"})
    first = fetch(f"s3://{bucket}/m")
    put(client, bucket, {"m/config.json": b'{"v": 2}'})
    second = fetch(f"s3://{bucket}/m")
    assert Path(second.local, "config.json").read_bytes() == b'{"v": 2}'
    assert second.record["revision"] != first.record["revision"]


def test_a_cut_download_resumes_with_a_range_request(s3, proxy):
    _, client, bucket = s3
    put(client, bucket, {"m/model.safetensors": WEIGHTS})
    proxy.cut_next[f"/{bucket}/m/model.safetensors"] = 100_000
    local = fetch(f"s3://{bucket}/m").local
    assert Path(local, "model.safetensors").read_bytes() == WEIGHTS
    assert gets(proxy, "/m/model.safetensors") == [None, "bytes=100000-"]


def test_a_partial_left_by_a_killed_run_is_resumed(s3, proxy):
    """What a pod killed mid-download leaves behind: the .part file and the ETag it belongs to."""
    _, client, bucket = s3
    etag = client.put_object(Bucket=bucket, Key="m/model.safetensors", Body=WEIGHTS)["ETag"].strip('"')
    entry = store.entry_dir("s3", f"{proxy.url}|{bucket}|m", f"{bucket}/m")
    part = entry / "partial" / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(WEIGHTS[:123_456])
    part.with_suffix(".part.etag").write_text(etag)
    assert Path(fetch(f"s3://{bucket}/m").local, "model.safetensors").read_bytes() == WEIGHTS
    assert gets(proxy, "/m/model.safetensors") == ["bytes=123456-"]


def test_a_partial_of_another_version_is_never_spliced(s3, proxy):
    _, client, bucket = s3
    put(client, bucket, {"m/model.safetensors": WEIGHTS})
    entry = store.entry_dir("s3", f"{proxy.url}|{bucket}|m", f"{bucket}/m")
    part = entry / "partial" / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"old bytes")
    part.with_suffix(".part.etag").write_text("an-older-etag")
    assert Path(fetch(f"s3://{bucket}/m").local, "model.safetensors").read_bytes() == WEIGHTS
    assert gets(proxy, "/m/model.safetensors") == [None]


def test_a_corrupted_cache_entry_is_detected_and_fetched_again(s3, proxy):
    _, client, bucket = s3
    put(client, bucket, {"m/model.safetensors": WEIGHTS})
    local = Path(fetch(f"s3://{bucket}/m").local, "model.safetensors")
    data = bytearray(local.read_bytes())
    data[1000] ^= 0xFF
    local.write_bytes(bytes(data))
    assert Path(fetch(f"s3://{bucket}/m").local, "model.safetensors").read_bytes() == WEIGHTS
    assert len(gets(proxy, "/m/model.safetensors")) == 2


def test_wrong_credentials_are_denied(s3, monkeypatch):
    _, client, bucket = s3
    put(client, bucket, {"m/config.json": b"{}"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceDenied, match="access denied") as exc:
        fetch(f"s3://{bucket}/m")
    assert exc.value.exit_code == ExitCode.SOURCE_DENIED
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOSUCHKEY0000000")
    with pytest.raises(SourceDenied, match="access denied"):
        fetch(f"s3://{bucket}/m")


def test_missing_bucket_and_object_are_named(s3):
    bucket = s3[2]
    with pytest.raises(SourceMissing, match="no such bucket") as exc:
        fetch("s3://no-such-bucket-here/m")
    assert exc.value.exit_code == ExitCode.SOURCE_MISSING
    with pytest.raises(SourceMissing, match=f"s3://{bucket}/nothing: no such object or prefix"):
        fetch(f"s3://{bucket}/nothing")


def test_an_unreachable_endpoint_is_a_transfer_error(s3, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(TransferFailed, match=f"cannot talk to http://127.0.0.1:{port}") as exc:
        fetch(f"s3://{s3[2]}/m")
    assert exc.value.exit_code == ExitCode.TRANSFER


# --- the shared cache is checked against the store, not against itself (issue 22, item 3) --------------


def test_a_tampered_file_with_a_matching_manifest_is_fetched_again(s3, proxy):
    """A co-tenant on the cache swaps the bytes and rewrites manifest.json to match: the ETag still catches it."""
    import hashlib
    import json

    _, client, bucket = s3
    put(client, bucket, {"m/model.safetensors": WEIGHTS})
    local = Path(fetch(f"s3://{bucket}/m").local)
    evil = os.urandom(len(WEIGHTS))
    (local / "model.safetensors").write_bytes(evil)
    manifest_file = local.parent / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["model.safetensors"]["sha256"] = hashlib.sha256(evil).hexdigest()
    manifest_file.write_text(json.dumps(manifest))
    assert Path(fetch(f"s3://{bucket}/m").local, "model.safetensors").read_bytes() == WEIGHTS
    assert len(gets(proxy, "/m/model.safetensors")) == 2


def downloads(proxy, key_suffix: str) -> int:
    return sum(1 for method, path in proxy.methods if method == "GET" and path.endswith(key_suffix))


def multipart(client, bucket: str, key: str, parts: list[bytes]) -> str:
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, body in enumerate(parts, start=1):
        etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        done.append({"ETag": etag, "PartNumber": number})
    result = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done})
    return result["ETag"].strip('"')


@pytest.mark.slow
def test_a_multipart_object_is_verified_by_its_etag_and_reused(s3, proxy):
    """Big models are multipart uploads: their ETag (MD5 of the parts' MD5s) is checked on download and on reuse."""
    _, client, bucket = s3
    parts = [os.urandom(5 << 20), os.urandom(1000)]
    etag = multipart(client, bucket, "big/model.safetensors", parts)
    assert etag.endswith("-2")
    local = Path(fetch(f"s3://{bucket}/big").local, "model.safetensors")
    assert local.read_bytes() == b"".join(parts)
    fetch(f"s3://{bucket}/big")
    assert downloads(proxy, "/big/model.safetensors") == 1  # verified in place, not downloaded again
    data = bytearray(local.read_bytes())
    data[-10] ^= 0xFF  # a flipped byte in the second part
    local.write_bytes(bytes(data))
    assert Path(fetch(f"s3://{bucket}/big").local, "model.safetensors").read_bytes() == b"".join(parts)
    assert downloads(proxy, "/big/model.safetensors") == 2
