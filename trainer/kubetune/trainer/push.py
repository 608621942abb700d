"""output.push_to: upload adapter/, merged/, gguf/ and run.json to s3:// or hf://, so a reader never sees half a model.

- hf://org/name[@branch][/prefix]: every file in ONE commit (huggingface_hub's
  create_commit); a commit is all-or-nothing, so the repo shows the old result or
  the new one.
- s3://bucket/prefix: S3 has no multi-object transaction, so the completion marker
  is the protocol: the old `kubetune-push.json` is deleted first, the files are
  uploaded (boto3's transfer manager: multipart, parallel), stale files from an
  earlier push are removed, and the manifest (every file's size and SHA-256) is
  written last. A reader that finds the manifest has a complete result and can
  verify each file; kubetune's own s3:// fetch does exactly that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from kubetune.api.remote import Remote, parse
from kubetune.trainer.errors import SourceDenied, UsageError
from kubetune.trainer.sources.s3 import PUSH_MANIFEST

log = logging.getLogger("kubetune.push")
MANIFEST = PUSH_MANIFEST
ITEMS = ("adapter", "merged", "gguf", "run.json")


def files_to_push(out: Path) -> dict[str, Path]:
    """path under the target -> local file, for whichever of adapter/, merged/, gguf/, run.json exist.

    gguf/ is made from merged/ (`kubetune export`): without merged/ it is a leftover of another adapter."""
    found: dict[str, Path] = {}
    for item in ITEMS:
        path = out / item
        if item == "gguf" and not (out / "merged").is_dir():
            continue
        if path.is_file():
            found[item] = path
        elif path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                found[f"{item}/{f.relative_to(path).as_posix()}"] = f
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _push_s3(remote: Remote, files: dict[str, Path]) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    from kubetune.trainer.sources import s3 as s3src

    client = s3src.client()
    prefix = remote.key.strip("/")

    def key(rel: str) -> str:
        return f"{prefix}/{rel}" if prefix else rel

    manifest = {"files": {rel: {"size": p.stat().st_size, "sha256": _sha256(p)} for rel, p in files.items()}}
    try:
        client.delete_object(Bucket=remote.bucket, Key=key(MANIFEST))  # from now on: "push in progress"
        for rel, path in files.items():
            client.upload_file(str(path), remote.bucket, key(rel))
        stale = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=remote.bucket, Prefix=key("")):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(key("")) :]
                if rel.split("/")[0] in ITEMS and rel not in files:
                    stale.append({"Key": obj["Key"]})
        if stale:
            client.delete_objects(Bucket=remote.bucket, Delete={"Objects": stale})
        manifest["pushed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        client.put_object(Bucket=remote.bucket, Key=key(MANIFEST), Body=json.dumps(manifest, indent=1).encode())
    except (BotoCoreError, ClientError) as exc:
        raise s3src.error(exc, f"output.push_to {remote.uri}") from None
    return {"push_to": remote.uri, "manifest": f"s3://{remote.bucket}/{key(MANIFEST)}", "files": len(files)}


def _push_hf(remote: Remote, files: dict[str, Path]) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, HfApi, errors

    from kubetune.trainer.sources import hf as hfsrc

    token = hfsrc.token()
    if not token:
        raise SourceDenied(f"output.push_to {remote.uri}: pushing to the hub needs HF_TOKEN or HF_TOKEN_FILE")
    api = HfApi(endpoint=hfsrc.endpoint(), token=token)
    base = remote.path_in_repo.strip("/")
    operations = [
        CommitOperationAdd(path_in_repo=f"{base}/{rel}" if base else rel, path_or_fileobj=str(path))
        for rel, path in files.items()
    ]
    try:
        api.create_repo(remote.repo_id, repo_type=remote.repo_type, private=True, exist_ok=True)
        info = api.create_commit(
            remote.repo_id,
            operations,
            commit_message="kubetune: " + ", ".join(sorted({rel.split("/")[0] for rel in files})),
            repo_type=remote.repo_type,
            revision=remote.revision,
        )
    except (errors.HfHubHTTPError, OSError) as exc:
        raise hfsrc.error(exc, f"output.push_to {remote.uri}") from None
    return {"push_to": remote.uri, "commit": info.oid, "files": len(files)}


def push(out: Path, target: str) -> dict[str, Any]:
    """Upload what the run produced; returns where it went (for run.json and the termination message)."""
    try:
        remote = parse(target, "output")
    except ValueError as exc:
        raise UsageError(f"output.push_to: {exc}") from None
    files = files_to_push(out)
    if not files:
        raise UsageError(f"output.push_to: nothing to push in {out} (no adapter/, merged/ or run.json)")
    log.info("push %d files from %s to %s", len(files), out, target)
    if remote.scheme == "s3":
        result = _push_s3(remote, files)
    elif remote.scheme == "hf":
        result = _push_hf(remote, files)
    else:
        raise UsageError(f"output.push_to: {target}: results can be pushed to s3:// or hf:// only")
    log.info("pushed to %s", target)
    return result
