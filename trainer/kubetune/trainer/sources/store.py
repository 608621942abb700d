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
store gives one) checked out.

The cache may be shared with other jobs, so nothing in it vouches for itself: a
reused file is re-hashed against what the *source* says it is (a pinned SHA-256,
a push manifest's SHA-256, the MD5 or multipart MD5 an S3 ETag is), never against
the manifest next to it; a file that cannot be tied to its source that way is
fetched again. Every path taken from a remote name (an S3 key, a URL's file name)
or from the manifest goes through `inside`, which refuses anything that would land
outside the entry, for writes and deletes alike.
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
from kubetune.trainer.errors import SourceDenied, TransferFailed

log = logging.getLogger("kubetune.fetch")

CHUNK = 1 << 20
ATTEMPTS = 5  # tries per file in one run; each resumes where the last stopped
UNSIZED_LIMIT = 64 << 30  # a pinned file served without a size is cut off here (a stream never ends)
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-([0-9]{1,5})$")


class RangeIgnored(TransferFailed):
    """The server sent the whole file instead of the asked-for range: start this file over."""


class UnsafeSource(SourceDenied):
    """What a source serves cannot be used safely (a name outside the cache, bytes that cannot be verified).

    Permanent (the same source fails the same way), so exit code 11 like a refused credential.
    """


def inside(root: Path, rel: str, what: str) -> Path:
    """`root/rel`, refused unless `rel` is a plain relative path that stays under `root` (symlinks followed).

    The one containment check: S3 keys may hold `..` and `//`, a URL's name may be `..%2F`, a manifest
    in a shared cache may be rewritten; none of them may write or delete outside the entry.
    """
    parts = rel.split("/")
    bad = (
        "it is empty"
        if not rel
        else "it is absolute"
        if rel.startswith("/")
        else "it has a '.' or '..' segment"
        if any(p in (".", "..") for p in parts)
        else "it has an empty segment ('//')"
        if "" in parts
        else "it has a NUL or backslash"
        if "\0" in rel or "\\" in rel
        else None
    )
    path = root / rel
    if bad is None and not path.resolve().is_relative_to(root.resolve()):
        bad = "a symlink in the cache points outside it"
    if bad:
        raise UnsafeSource(f"{what}: the name {rel!r} would land outside the cache ({bad}); refused")
    return path


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch. `open_from(offset)` yields its bytes from `offset` on (a Range request)."""

    rel: str  # path under the entry's files/ ("" for a single-file entry: the basename is used)
    size: int | None
    etag: str | None
    open_from: Callable[[int], Iterator[bytes]]
    sha256: str | None = None  # expected, when the source states one (https://...#sha256=, a push manifest)
    part_size: int | None = None  # an S3 multipart object's part size: its ETag is then checkable
    version_id: str | None = None  # an S3 object's version, where the bucket keeps versions

    @property
    def md5(self) -> str | None:
        """S3 and many servers give a single-part object's MD5 as its ETag; multipart ETags end in -N."""
        tag = (self.etag or "").strip('"').lower()
        return tag if _MD5_ETAG.match(tag) else None

    @property
    def verifiable(self) -> bool:
        """Whether the bytes can be checked against what the source says they are (not just their size)."""
        multipart = _MULTIPART_ETAG.match((self.etag or "").strip('"').lower())
        return bool(self.sha256 or self.md5 or (multipart and self.part_size))


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


def read_manifest(entry: Path) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(entry: Path, manifest: dict[str, dict[str, Any]]) -> None:
    """A fresh temporary name (O_EXCL): a link planted in a shared cache is never written through."""
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=".manifest.", dir=entry)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, entry / "manifest.json")


def digests(path: Path, part_size: int | None = None) -> dict[str, str]:
    """sha256, md5 and (with a part size) the S3 multipart ETag of a file, in one read."""
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    parts: list[bytes] = []
    part, in_part = hashlib.md5(usedforsecurity=False), 0
    with path.open("rb") as fh:
        while block := fh.read(CHUNK if not part_size else min(CHUNK, part_size - in_part)):
            sha.update(block)
            md5.update(block)
            if part_size:
                part.update(block)
                in_part += len(block)
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.md5(usedforsecurity=False), 0
    if part_size and in_part:
        parts.append(part.digest())
    out = {"sha256": sha.hexdigest(), "md5": md5.hexdigest()}
    if part_size:
        out["multipart"] = f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"
    return out


def mismatch(remote: RemoteFile, got: dict[str, str]) -> str | None:
    """Why the bytes are not the ones the source describes, or None when they are (or nothing says)."""
    tag = (remote.etag or "").strip('"').lower()
    if remote.sha256 and got["sha256"] != remote.sha256:
        return f"sha256 {got['sha256']} differs from the expected {remote.sha256}"
    if remote.md5 and got["md5"] != remote.md5:
        return f"md5 {got['md5']} differs from the ETag {remote.md5}"
    if "multipart" in got and _MULTIPART_ETAG.match(tag) and got["multipart"] != tag:
        return f"multipart md5 {got['multipart']} differs from the ETag {tag}"
    return None


def _cached(path: Path, remote: RemoteFile) -> str | None:
    """The cached copy's SHA-256 if it has exactly the bytes the source describes now, else None.

    The manifest beside it is not consulted: whoever can write the cache can write that too.
    """
    if not path.is_file() or path.is_symlink():
        return None
    if remote.size is not None and path.stat().st_size != remote.size:
        log.warning("cache: %s has the wrong size (corrupted or changed); fetching it again", path)
        return None
    if not remote.verifiable:
        log.info("cache: %s cannot be checked against its source (no hash); fetching it again", path)
        return None
    got = digests(path, remote.part_size)
    problem = mismatch(remote, got)
    if problem:
        log.warning("cache: %s does not match its source (%s); fetching it again", path, problem)
        return None
    return got["sha256"]


def identity(remote: RemoteFile, sha256: str | None) -> dict[str, Any]:
    """What the sources lock keeps of one file: enough to use the cached copy later without asking the source."""
    return {
        "rel": remote.rel,
        "etag": remote.etag,
        "size": remote.size,
        "sha256": sha256,
        "version_id": remote.version_id,
    }


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


def _append(remote: RemoteFile, part: Path, offset: int, progress: _Progress, label: str) -> None:
    """Append the bytes from `offset` on, never more than the source said it has (a stream may not end)."""
    limit = remote.size if remote.size is not None else UNSIZED_LIMIT
    with part.open("ab") as fh:
        written = offset
        for block in remote.open_from(offset):
            written += len(block)
            if written > limit:
                raise UnsafeSource(f"{label}: the server sent more than the {limit} bytes it announced; refused")
            fh.write(block)
            progress.add(len(block))


def _download(remote: RemoteFile, part: Path, label: str) -> None:
    """Fill `part` up to the remote size, resuming across attempts; a stale partial is dropped.

    A partial is resumed only when it is pinned to the same ETag: without one, nothing tells an
    old prefix from the new file's, so every attempt starts over.
    """
    tag_file = part.with_suffix(part.suffix + ".etag")
    if part.exists() and (not remote.etag or not tag_file.exists() or tag_file.read_text() != remote.etag):
        part.unlink()  # bytes of a different (or unknown) version of the object: never splice
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch()
    tag_file.write_text(remote.etag or "")
    failures, last_error = 0, None
    while failures < ATTEMPTS:
        if not remote.etag or not part.exists():  # no version to pin a resume to, or the range was ignored
            part.write_bytes(b"")
        offset = part.stat().st_size
        if remote.size is not None and offset >= remote.size:
            return
        try:
            _append(remote, part, offset, _Progress(label, remote.size, offset), label)
            if remote.size is None or part.stat().st_size >= remote.size:
                return
            last_error = f"connection closed after {part.stat().st_size} of {remote.size} bytes"
        except UnsafeSource:
            part.unlink()
            raise
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
    """Size, then SHA-256 (pinned), MD5 or multipart MD5 (the S3 ETag); returns the SHA-256 for the manifest."""
    size = part.stat().st_size
    if remote.size is not None and size != remote.size:
        part.unlink()
        raise TransferFailed(f"{label}: got {size} bytes, expected {remote.size}; discarded, run again")
    got = digests(part, remote.part_size)
    problem = mismatch(remote, got)
    if problem:
        part.unlink()
        raise TransferFailed(f"{label}: downloaded bytes are corrupt ({problem}); discarded, run again")
    return got["sha256"]


def _forget_gone(entry: Path, manifest: dict[str, dict[str, Any]], wanted: set[str]) -> None:
    """Files gone from the source go from the cache; a manifest name outside the entry is dropped, not followed."""
    for rel in set(manifest) - wanted:
        try:
            inside(entry / "files", rel, str(entry)).unlink(missing_ok=True)
        except UnsafeSource as exc:
            log.warning("cache: %s (not deleted)", exc)
        del manifest[rel]


def sync(entry: Path, files: list[RemoteFile], label: str) -> Path:
    """Make entry/files hold exactly `files`, fetching only what is missing, changed or corrupt."""
    target = entry / "files"
    for remote in files:  # every name checked before anything is written
        inside(target, remote.rel, label)
        inside(entry / "partial", remote.rel + ".part", label)
    manifest = read_manifest(entry)
    _forget_gone(entry, manifest, {f.rel for f in files})
    for remote in files:
        dest = inside(target, remote.rel, label)
        if sha256 := _cached(dest, remote):
            manifest[remote.rel] = {"etag": remote.etag, "size": dest.stat().st_size, "sha256": sha256}
            continue
        name = label if label.endswith(remote.rel) else f"{label}/{remote.rel}"
        part = inside(entry / "partial", remote.rel + ".part", label)
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


def offline(target: Path, files: list[dict[str, Any]], label: str) -> None:
    """Check a locked entry without its source: each file present and hashing to the SHA-256 the lock recorded."""
    for f in files:
        path = inside(target, f["rel"], label)
        want = f.get("sha256")
        got = digests(path)["sha256"] if path.is_file() and not path.is_symlink() else None
        if not want or got != want:
            raise TransferFailed(
                f"{label}: the cached {f['rel']} is missing or differs from what was fetched; "
                "run `kubetune fetch` (the initializer) again"
            )
