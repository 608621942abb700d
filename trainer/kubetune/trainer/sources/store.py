"""The download cache for object stores and plain URLs (s3://, https://): resume, verify, land atomically.

Why not boto3's transfer manager or a plain `requests` download: both throw a
partial download away (s3transfer writes to a random temporary name and deletes
it on failure), so a 10 GB model cut at 9 GB starts over. Here each file is
fetched with HTTP Range requests into `partial/<name>.part`, which survives a
crash or a killed pod; the next attempt (in this run or the next) asks only for
the missing bytes, pinned to the same ETag so a changed object is never spliced
onto an old prefix. Hugging Face repos do not come through here: huggingface_hub
already caches, resumes and verifies (see hf.py).

An entry on disk:
    <cache>/sources/<scheme>/<name>-<hash>/files/...     what the trainer reads
    <cache>/sources/<scheme>/<name>-<hash>/manifest.json  size, etag, sha256 per file
    <cache>/sources/<scheme>/<name>-<hash>/partial/       downloads in progress
A file appears under files/ only after its size (and MD5 or SHA-256 where the
store gives one) checked out; a reused file is re-hashed against the manifest, so
a corrupted cache entry is detected and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api import contract
from kubetune.trainer.errors import TransferFailed

log = logging.getLogger("kubetune.fetch")

CHUNK = 1 << 20
ATTEMPTS = 5  # tries per file in one run; each resumes where the last stopped
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class RangeIgnored(TransferFailed):
    """The server sent the whole file instead of the asked-for range: start this file over."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. `open_from(offset)` yields its bytes from `offset` on (a Range request)."""

    rel: str  # path under the entry's files/ ("" for a single-file entry: the basename is used)
    size: int | None
    etag: str | None
    open_from: Callable[[int], Iterator[bytes]]
    sha256: str | None = None  # expected, when the source states one (https://...#sha256=)

    @property
    def md5(self) -> str | None:
        """S3 and many servers give a single-part object's MD5 as its ETag; multipart ETags end in -N."""
        tag = (self.etag or "").strip('"').lower()
        return tag if _MD5_ETAG.match(tag) else None


def cache_root() -> Path:
    return Path(os.environ.get(contract.ENV_CACHE_DIR) or Path.home() / ".cache" / "kubetune") / "sources"


def entry_dir(scheme: str, identity: str, label: str) -> Path:
    """A stable, readable directory for one remote location (identity includes the endpoint)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[-60:] or "entry"
    return cache_root() / scheme / f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:12]}"


@contextmanager
def locked(entry: Path) -> Iterator[None]:
    """One downloader per entry: other processes (torchrun workers, a second pod) wait, then reuse."""
    from filelock import FileLock

    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        yield


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(entry: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(entry: Path, manifest: dict[str, dict[str, Any]]) -> None:
    tmp = entry / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, entry / "manifest.json")


def _cached_ok(path: Path, meta: dict[str, Any] | None, remote: RemoteFile) -> bool:
    """The cached copy is the same object (etag, size) and still has the bytes it landed with."""
    if not meta or not path.is_file() or meta.get("etag") != remote.etag:
        return False
    if remote.size is not None and meta.get("size") != remote.size:
        return False
    if path.stat().st_size != meta.get("size"):
        log.warning("cache: %s has the wrong size (corrupted); fetching it again", path)
        return False
    if _hash_file(path) != meta.get("sha256"):
        log.warning("cache: %s does not match its recorded sha256 (corrupted); fetching it again", path)
        return False
    return True


class _Progress:
    """A log line at every 10% (pod logs and CI have no terminal for a bar)."""

    def __init__(self, name: str, total: int | None, start: int):
        self.name, self.total, self.done, self.next_tenth = name, total, start, 1
        self.started = time.monotonic()
        if total and start:
            log.info("fetch %s: resuming at %.1f of %.1f MB", name, start / 1e6, total / 1e6)
            self.next_tenth = start * 10 // total + 1

    def add(self, n: int) -> None:
        self.done += n
        if self.total and self.done * 10 >= self.next_tenth * self.total:
            self.next_tenth = self.done * 10 // self.total + 1
            rate = self.done / max(time.monotonic() - self.started, 1e-3) / 1e6
            percent = 100 * self.done // self.total
            log.info("fetch %s: %d%% of %.1f MB (%.1f MB/s)", self.name, percent, self.total / 1e6, rate)


def _download(remote: RemoteFile, part: Path, label: str) -> None:
    """Fill `part` up to the remote size, resuming across attempts; a stale partial is dropped."""
    tag_file = part.with_suffix(part.suffix + ".etag")
    if part.exists() and (not tag_file.exists() or tag_file.read_text() != (remote.etag or "")):
        part.unlink()  # bytes of a different version of the object: never splice
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    tag_file.write_text(remote.etag or "")
    failures, last_error = 0, None
    while failures < ATTEMPTS:
        offset = part.stat().st_size if part.exists() else 0
        if remote.size is not None and offset >= remote.size:
            return
        progress = _Progress(label, remote.size, offset)
        try:
            with part.open("ab") as fh:
                for block in remote.open_from(offset):
                    fh.write(block)
                    progress.add(len(block))
            if remote.size is None or part.stat().st_size >= remote.size:
                return
            last_error = f"connection closed after {part.stat().st_size} of {remote.size} bytes"
        except RangeIgnored as exc:
            part.unlink()
            last_error = str(exc)
        except TransferFailed as exc:
            last_error = str(exc)
        grew = part.exists() and part.stat().st_size > offset
        failures = 0 if grew else failures + 1
        log.warning("fetch %s: interrupted (%s); resuming", label, last_error)
        time.sleep(min(0.2 * 2**failures, 5))
    raise TransferFailed(
        f"{label}: download failed after {ATTEMPTS} attempts without progress ({last_error}); "
        f"the partial file is kept; run again to resume"
    )


def _verify(remote: RemoteFile, part: Path, label: str) -> str:
    """Size, then MD5 (S3 single-part ETag) or the stated SHA-256; returns the SHA-256 for the manifest."""
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise TransferFailed(f"{label}: got {size} bytes, expected {remote.size}; discarded, run again")
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with part.open("rb") as fh:
        while block := fh.read(CHUNK):
            sha.update(block)
            md5.update(block)
    problem = None
    if remote.sha256 and sha.hexdigest() != remote.sha256:
        problem = f"sha256 {sha.hexdigest()} differs from the expected {remote.sha256}"
    elif remote.md5 and md5.hexdigest() != remote.md5:
        problem = f"md5 {md5.hexdigest()} differs from the ETag {remote.md5}"
    if problem:
        part.unlink()
        raise TransferFailed(f"{label}: downloaded bytes are corrupt ({problem}); discarded, run again")
    return sha.hexdigest()


def sync(entry: Path, files: list[RemoteFile], label: str) -> Path:
    """Make entry/files hold exactly `files`, fetching only what is missing, changed or corrupt."""
    target = entry / "files"
    manifest = read_manifest(entry)
    wanted = {f.rel for f in files}
    for rel in set(manifest) - wanted:  # gone from the source: gone from the cache
        (target / rel).unlink(missing_ok=True)
        del manifest[rel]
    for remote in files:
        dest = target / remote.rel
        if _cached_ok(dest, manifest.get(remote.rel), remote):
            continue
        name = label if label.endswith(remote.rel) else f"{label}/{remote.rel}"
        part = entry / "partial" / (remote.rel + ".part")
        _download(remote, part, name)
        sha256 = _verify(remote, part, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)  # the atomic landing: complete and verified, or absent
        part.with_suffix(part.suffix + ".etag").unlink(missing_ok=True)
        manifest[remote.rel] = {"etag": remote.etag, "size": dest.stat().st_size, "sha256": sha256}
        _write_manifest(entry, manifest)
    _write_manifest(entry, manifest)
    return target


def revision_of(files: list[RemoteFile]) -> str:
    """One identity for what was fetched: a digest of every (path, etag, size)."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.rel):
        digest.update(f"{f.rel}\0{f.etag}\0{f.size}\n".encode())
    return digest.hexdigest()[:16]
