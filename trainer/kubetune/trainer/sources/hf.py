"""hf:// sources: a Hugging Face repo at a revision, through huggingface_hub's own cache.

huggingface_hub.snapshot_download already does what a cache needs: per-file locks,
`.incomplete` files resumed with Range requests, size checks, content-addressed
blobs and a snapshot per commit. Kept here: the endpoint and token taken from the
environment at call time (HF_ENDPOINT, HF_TOKEN or HF_TOKEN_FILE, a mounted
Secret), one line per failure, and one check it does not make: a blob already in
the cache is trusted forever. Blobs are named after the hub's ETag (the git blob
SHA-1, or the SHA-256 of an LFS file), so each reused file is re-hashed against its
own name and a corrupted one is deleted and fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

from kubetune.api import contract
from kubetune.api.remote import Remote
from kubetune.trainer.errors import KubetuneError, SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import store

log = logging.getLogger("kubetune.fetch")
_SHA1, _SHA256 = re.compile(r"^[0-9a-f]{40}$"), re.compile(r"^[0-9a-f]{64}$")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def token() -> str | None:
    """HF_TOKEN, else the file HF_TOKEN_FILE names (a mounted Secret); None for public repos."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"].strip()
    path = os.environ.get(contract.ENV_HF_TOKEN_FILE)
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise SourceDenied(f"HF_TOKEN_FILE {path}: cannot read the token: {exc.strerror}") from None
    return None


def error(exc: BaseException, what: str) -> KubetuneError:
    """huggingface_hub's exceptions as our three kinds."""
    from huggingface_hub import errors

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or (isinstance(exc, errors.HfHubHTTPError) and status == 403):
        return SourceDenied(f"{what}: access denied (HTTP {status}); the repo is gated or private: set HF_TOKEN")
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = "" if token() else " (or private: set HF_TOKEN)"
        return SourceMissing(f"{what}: no such repository at {endpoint()}{hint}")
    if isinstance(exc, errors.RevisionNotFoundError):
        return SourceMissing(f"{what}: no such revision")
    if isinstance(exc, errors.RemoteEntryNotFoundError):
        return SourceMissing(f"{what}: no such file in the repository")
    if isinstance(exc, errors.HfHubHTTPError) and status == 401:
        return SourceDenied(f"{what}: the token was refused (HTTP 401)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return TransferFailed(f"{what}: cannot download from {endpoint()}: {first}")


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(store.CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(store.CHUNK):
            digest.update(block)
    return digest.hexdigest()


def corrupted_blobs(snapshot: Path) -> list[Path]:
    """Blobs under a snapshot whose content does not hash to their name (the hub's ETag)."""
    bad = []
    for link in sorted(p for p in snapshot.rglob("*") if p.is_symlink()):
        blob = link.resolve()
        name = blob.name
        if not blob.is_file():
            continue
        actual = _sha256(blob) if _SHA256.match(name) else _git_blob_sha1(blob) if _SHA1.match(name) else name
        if actual != name:
            log.warning("cache: %s (%s) is corrupted; fetching it again", link.relative_to(snapshot), name[:12])
            bad.append(blob)
    return bad


def _download(remote: Remote, patterns: list[str] | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            remote.repo_id,
            repo_type=remote.repo_type,
            revision=remote.revision,
            cache_dir=store.cache_root() / "hf",
            token=token() or False,  # False: never fall back to a token stored on this machine by `hf auth`
            endpoint=endpoint(),
            allow_patterns=patterns,
        )
    )


def fetch(remote: Remote) -> tuple[str, dict[str, Any]]:
    patterns = [remote.path_in_repo, f"{remote.path_in_repo}/*"] if remote.path_in_repo else None
    try:
        snapshot = _download(remote, patterns)
        bad = corrupted_blobs(snapshot)
        if bad:
            for blob in bad:
                blob.unlink()  # its snapshot link now dangles, so the next call downloads it again
            snapshot = _download(remote, patterns)
            if corrupted_blobs(snapshot):
                raise TransferFailed(f"{remote.uri}: downloaded files do not match their hashes twice; not used")
    except KubetuneError:
        raise
    except Exception as exc:
        from huggingface_hub import errors

        if isinstance(exc, (errors.HfHubHTTPError, errors.EntryNotFoundError, OSError)):
            raise error(exc, remote.uri) from None
        raise
    local = snapshot / remote.path_in_repo if remote.path_in_repo else snapshot
    if not local.exists():
        raise SourceMissing(f"{remote.uri}: no file or folder {remote.path_in_repo!r} at that revision")
    record = {"endpoint": endpoint(), "repo": remote.repo_id, "repo_type": remote.repo_type, "commit": snapshot.name}
    return str(local), record
