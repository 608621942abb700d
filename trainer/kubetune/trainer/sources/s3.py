"""s3:// sources and push targets on any S3-compatible store (AWS, MinIO, Ceph, moto).

Endpoint, region and credentials come from where boto3 always looks: AWS_ENDPOINT_URL
(or AWS_ENDPOINT_URL_S3), AWS_REGION / AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE and its files, or the
pod's web identity. Never from the config: a spec is not a place for secrets.
With a custom endpoint, path-style addressing is used (what MinIO and Ceph
expect unless wildcard DNS is set up).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.remote import Remote
from kubetune.trainer.errors import KubetuneError, SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import store

PUSH_MANIFEST = "kubetune-push.json"  # written last by push.py; one fact, one place
_MISSING = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
_DENIED = {
    *("AccessDenied", "403", "401", "InvalidAccessKeyId", "SignatureDoesNotMatch"),
    *("ExpiredToken", "InvalidToken", "AllAccessDisabled"),
}


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def client() -> Any:
    import boto3
    from botocore.config import Config

    custom = endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if custom else None)
    config = Config(
        s3={"addressing_style": "path" if custom else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.session.Session().client("s3", region_name=region, config=config)


def error(exc: BaseException, what: str) -> KubetuneError:
    """botocore's many exceptions as our three kinds, with one line the user can act on."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SourceDenied(
            f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return SourceMissing(f"{what}: no such bucket")
        if code in _MISSING or status == 404:
            return SourceMissing(f"{what}: no such object")
        if code in _DENIED or status in (401, 403):
            return SourceDenied(f"{what}: access denied ({code}); check the S3 credentials and the bucket policy")
        return TransferFailed(f"{what}: S3 error {code or status}: {exc.response.get('Error', {}).get('Message', '')}")
    where = endpoint() or "AWS S3"
    return TransferFailed(
        f"{what}: cannot talk to {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    )


def _opener(s3: Any, bucket: str, key: str, etag: str | None, what: str) -> Any:
    def open_from(offset: int) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            kwargs["IfMatch"] = etag  # the same version we started on, or a clean failure
        if offset:
            kwargs["Range"] = f"bytes={offset}-"
        try:
            body = s3.get_object(**kwargs)["Body"]
            yield from body.iter_chunks(store.CHUNK)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise error(exc, what) from None

    return open_from


def list_files(s3: Any, remote: Remote) -> list[store.RemoteFile]:
    """One object if the key names one, else every object under `key/` (relative paths kept)."""
    from botocore.exceptions import BotoCoreError, ClientError

    uri = remote.uri
    key = remote.key
    try:
        if key and not key.endswith("/"):
            try:
                head = s3.head_object(Bucket=remote.bucket, Key=key)
                etag = head["ETag"].strip('"')
                name = PurePosixPath(key).name
                opener = _opener(s3, remote.bucket, key, etag, uri)
                one = store.RemoteFile(name, head["ContentLength"], etag, opener, version_id=head.get("VersionId"))
                return [_with_part_size(s3, remote.bucket, key, one)]
            except ClientError as exc:
                if not isinstance(error(exc, uri), SourceMissing):
                    raise
        prefix = key if not key or key.endswith("/") else key + "/"
        files = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=remote.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a "directory" placeholder some tools create
                etag = obj["ETag"].strip('"')
                opener = _opener(s3, remote.bucket, obj["Key"], etag, f"s3://{remote.bucket}/{obj['Key']}")
                rel = obj["Key"][len(prefix) :]
                files.append(
                    _with_part_size(s3, remote.bucket, obj["Key"], store.RemoteFile(rel, obj["Size"], etag, opener))
                )
    except (BotoCoreError, ClientError) as exc:
        raise error(exc, uri) from None
    if not files:
        raise SourceMissing(f"{uri}: no such object or prefix")
    return _as_pushed(s3, remote, prefix, files)


def _with_part_size(s3: Any, bucket: str, key: str, file: store.RemoteFile) -> store.RemoteFile:
    """A multipart object's ETag is the MD5 of its parts' MD5s: with the part size (part 1's length) it is checkable."""
    from botocore.exceptions import ClientError

    if "-" not in (file.etag or ""):
        return file
    try:
        head = s3.head_object(Bucket=bucket, Key=key, PartNumber=1)
    except ClientError:  # a store without part HEADs: the object is then checked by size only, and never reused
        return file
    return replace(file, part_size=head["ContentLength"]) if head.get("PartsCount", 1) > 1 else file


def _as_pushed(s3: Any, remote: Remote, prefix: str, files: list[store.RemoteFile]) -> list[store.RemoteFile]:
    """A prefix kubetune pushed to (or its adapter/ or merged/): only what its manifest lists, with its SHA-256.

    The manifest is written last (push.py), so without it a result is still being
    pushed, or the push was cut: better a clear error than half a model.
    """
    import json

    from botocore.exceptions import ClientError

    root, sub = prefix.rstrip("/"), ""
    parent, _, last = root.rpartition("/")
    if last in ("adapter", "merged"):
        root, sub = parent, last + "/"

    def key(name: str) -> str:
        return f"{root}/{name}" if root else name

    try:
        manifest = json.loads(s3.get_object(Bucket=remote.bucket, Key=key(PUSH_MANIFEST))["Body"].read())["files"]
    except ClientError as exc:
        if not isinstance(error(exc, remote.uri), SourceMissing):
            raise
        try:
            s3.head_object(Bucket=remote.bucket, Key=key("run.json"))
        except ClientError:
            return files  # not a kubetune result: a plain prefix
        raise TransferFailed(
            f"{remote.uri}: a kubetune result without {PUSH_MANIFEST}: a push is in progress or was cut; try again"
        ) from None
    wanted = {rel[len(sub) :]: meta for rel, meta in manifest.items() if rel.startswith(sub)}
    keep = [replace(f, sha256=wanted[f.rel]["sha256"]) for f in files if f.rel in wanted]
    missing = sorted(set(wanted) - {f.rel for f in keep})
    if missing:
        raise TransferFailed(
            f"{remote.uri}: {missing[0]} is listed in {PUSH_MANIFEST} but missing; a new push may be under way"
        )
    return keep


def _entry(remote: Remote, first: str) -> tuple[Path, bool]:
    """The cache entry of a location, and whether it names one object (then `first` is its name)."""
    single = bool(remote.key) and not remote.key.endswith("/") and first == PurePosixPath(remote.key).name
    key = remote.key if single else remote.key.rstrip("/")  # s3://b/p and s3://b/p/ share one entry
    return store.entry_dir("s3", f"{endpoint() or 'aws'}|{remote.bucket}|{key}", f"{remote.bucket}/{key}"), single


def offline(remote: Remote, files: list[dict[str, Any]]) -> str:
    """A locked location's local path, its files checked against the lock; S3 is not asked."""
    if not files:
        raise TransferFailed(f"{remote.uri}: the sources lock lists no files; run `kubetune fetch` again")
    entry, single = _entry(remote, files[0]["rel"])
    target = entry / "files"
    store.offline(target, files, remote.uri)
    return str(target / files[0]["rel"] if single else target)


def fetch(remote: Remote) -> tuple[str, dict[str, Any]]:
    """Download into the cache (or reuse it); returns the local path and what to record in run.json."""
    s3 = client()
    files = list_files(s3, remote)
    entry, single = _entry(remote, files[0].rel)
    with store.locked(entry):
        target = store.sync(entry, files, remote.uri)
    manifest = store.read_manifest(entry)
    record = {
        "endpoint": endpoint(),
        "files": len(files),
        "bytes": sum(f.size or 0 for f in files),
        "revision": store.revision_of(files),
        "file_identities": [store.identity(f, manifest.get(f.rel, {}).get("sha256")) for f in files],
    }
    return str(target / files[0].rel if single else target), record
