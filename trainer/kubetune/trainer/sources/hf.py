"""hf:// sources: a Hugging Face repo at a revision, through huggingface_hub's own cache.

huggingface_hub.snapshot_download already does what a cache needs: per-file locks,
`.incomplete` files resumed with Range requests, size checks, content-addressed
blobs and a snapshot per commit. Kept here: the endpoint and token taken from the
environment at call time (HF_ENDPOINT, HF_TOKEN or HF_TOKEN_FILE, a mounted
Secret), one line per failure, and one check it does not make: what is already in
the cache is trusted forever. The cache may be shared with other jobs, so every
file under the snapshot (link or not) is hashed and compared with the hash the
*hub* lists for it at that commit (the SHA-256 of an LFS file, the git blob SHA-1
of any other); a file that differs is deleted and fetched again, one the hub does
not list is removed. Blob names and the snapshot's own files prove nothing.
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


def content_hash(path: Path, expected: str) -> str:
    """The file's hash in the form the hub gave: SHA-256 for 64 hex digits, git blob SHA-1 for 40."""
    return store.digests(path)["sha256"] if _SHA256.match(expected) else _git_blob_sha1(path)


def hub_hashes(remote: Remote, commit: str) -> dict[str, str]:
    """Path in repo -> the hub's hash for it at `commit` (asked of the hub, never read from the cache)."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint(), token=token() or False)
    tree = api.list_repo_tree(remote.repo_id, recursive=True, revision=commit, repo_type=remote.repo_type)
    return {f.path: (f.lfs.sha256 if f.lfs else f.blob_id) for f in tree if isinstance(f, RepoFile)}


def _under(expected: dict[str, str], sub: str) -> dict[str, str]:
    return {k: v for k, v in expected.items() if not sub or k == sub or k.startswith(sub + "/")}


def tampered(snapshot: Path, sub: str, expected: dict[str, str]) -> list[str]:
    """Paths under snapshot/sub whose bytes differ from the hub's hash, that the hub does not list, or that are gone."""
    wanted = _under(expected, sub)
    root = snapshot / sub if sub else snapshot
    present = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
    bad = []
    for path in sorted(present):
        rel = path.relative_to(snapshot).as_posix()
        want = wanted.get(rel)
        if want is None or not path.is_file() or content_hash(path, want) != want:
            log.warning("cache: %s in %s is not the hub's file; fetching it again", rel, snapshot.name[:12])
            bad.append(rel)
    return bad + sorted(rel for rel in wanted if not (snapshot / rel).is_file() and rel not in bad)


def _discard(snapshot: Path, rels: list[str]) -> None:
    """Remove what failed the check: the link or file, and a blob it points to inside the hf cache."""
    hf_root = (store.cache_root() / "hf").resolve()
    for rel in rels:
        path = snapshot / rel
        target = path.resolve()
        if path.is_symlink() and target.is_relative_to(hf_root) and target.is_file():
            target.unlink()
        if path.is_symlink() or path.is_file():
            path.unlink()


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


def _checked_snapshot(remote: Remote, patterns: list[str] | None) -> tuple[Path, dict[str, str]]:
    """Download, then hold every file to the hub's hashes; what fails is fetched once more, then refused."""
    snapshot = _download(remote, patterns)
    expected = hub_hashes(remote, snapshot.name)
    bad = tampered(snapshot, remote.path_in_repo, expected)
    if bad:
        _discard(snapshot, bad)
        snapshot = _download(remote, patterns)
        if tampered(snapshot, remote.path_in_repo, expected):
            raise TransferFailed(f"{remote.uri}: downloaded files do not match the hub's hashes twice; not used")
    return snapshot, _under(expected, remote.path_in_repo)


def fetch(remote: Remote) -> tuple[str, dict[str, Any]]:
    patterns = [remote.path_in_repo, f"{remote.path_in_repo}/*"] if remote.path_in_repo else None
    try:
        snapshot, expected = _checked_snapshot(remote, patterns)
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
    return str(local), {**record, "file_identities": [{"rel": k, "hash": v} for k, v in sorted(expected.items())]}


def snapshot_dir(remote: Remote, commit: str) -> Path:
    """Where huggingface_hub keeps `commit` of this repo in our cache (its documented layout)."""
    from huggingface_hub.file_download import repo_folder_name

    if not _SHA1.match(commit):
        raise store.UnsafeSource(f"{remote.uri}: the recorded commit {commit!r} is not a commit hash")
    folder = repo_folder_name(repo_id=remote.repo_id, repo_type=remote.repo_type)
    return store.cache_root() / "hf" / folder / "snapshots" / commit


def offline(remote: Remote, locked: dict[str, Any], files: list[dict[str, Any]]) -> str:
    """The path of a locked snapshot, with no request to the hub: every file must hash as the lock says."""
    snapshot = snapshot_dir(remote, locked["commit"])
    expected = {f["rel"]: f["hash"] for f in files}
    if tampered(snapshot, remote.path_in_repo, expected):
        raise TransferFailed(
            f"{remote.uri}: the cached commit {locked['commit'][:12]} does not match the fetched files; "
            "run `kubetune fetch` (the initializer) again"
        )
    return str(snapshot / remote.path_in_repo if remote.path_in_repo else snapshot)
