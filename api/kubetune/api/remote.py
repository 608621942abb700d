"""Remote locations for models, data and results: `hf://`, `s3://`, `https://` (and `http://`).

Pure parsing, shared by the trainer (which fetches and pushes) and the operator
(which decides whether an initializer must fill a cache first). Credentials never
appear here: they come from the environment (HF_TOKEN, AWS_*) or a Secret.

Forms:
- `hf://[models/|datasets/]org/name[@revision][/path/in/repo]` (the syntax of
  huggingface_hub's HfFileSystem); without a type prefix the repo is a model for
  `model.path` and `output.push_to`, a dataset for `data.path`.
- `s3://bucket[/key-or-prefix]`: one object, or every object under the prefix.
- `https://host/path[#sha256=<hex>]`: one file; the optional fragment is its expected hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

Kind = Literal["model", "data", "output"]
SCHEMES = ("hf", "s3", "https", "http")
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")  # branch, tag, refs/pr/N or a commit


def _plain_segments(uri: str, what: str, parts: list[str]) -> None:
    """Refuse `.` and `..` (and control characters): a remote path must stay inside what it names."""
    for part in parts:
        if part in (".", "..") or any(ord(c) < 32 for c in part) or "\\" in part:
            raise ValueError(f"{uri}: {what} may not contain {part!r} (only plain names, no '.' or '..')")


@dataclass(frozen=True)
class Remote:
    """One parsed remote location. `uri` is what the user wrote."""

    scheme: str
    uri: str
    # hf://
    repo_type: str = ""
    repo_id: str = ""
    revision: str | None = None
    path_in_repo: str = ""
    # s3://
    bucket: str = ""
    key: str = ""
    # http(s)://
    url: str = ""
    sha256: str | None = None


def is_remote(location: str) -> bool:
    """True for anything with a URL scheme (`x://`); local paths and `builtin:` are not remote."""
    return "://" in location


def _parse_hf(uri: str, rest: str, kind: Kind) -> Remote:
    parts = [p for p in rest.split("/") if p != ""]
    _plain_segments(uri, "the path", [unquote(p) for p in parts])
    repo_type = "dataset" if kind == "data" else "model"
    if parts and parts[0] in REPO_TYPES:
        repo_type = REPO_TYPES[parts.pop(0)]
    if not parts:
        raise ValueError(f"{uri}: expected hf://[datasets/]org/name[@revision][/path]")
    # org/name, or a single legacy name (hf://gpt2); the revision sits on the last repo segment.
    take = 2 if len(parts) >= 2 and "@" not in parts[0] else 1
    repo_parts, path_parts = parts[:take], parts[take:]
    revision = None
    if "@" in repo_parts[-1]:
        repo_parts[-1], revision = repo_parts[-1].split("@", 1)
        revision = unquote(revision)  # refs/pr/1 is written refs%2Fpr%2F1
        if not revision:
            raise ValueError(f"{uri}: empty revision after '@'")
        if not _REVISION.match(revision) or ".." in revision.split("/") or "//" in revision:
            raise ValueError(f"{uri}: {revision!r} is not a valid revision (a branch, tag, refs/pr/N or commit)")
    for part in repo_parts:
        if not _REPO_PART.match(part):
            raise ValueError(f"{uri}: {part!r} is not a valid Hugging Face repo name")
    return Remote(
        scheme="hf",
        uri=uri,
        repo_type=repo_type,
        repo_id="/".join(repo_parts),
        revision=revision,
        path_in_repo="/".join(path_parts),
    )


def _parse_s3(uri: str, rest: str) -> Remote:
    bucket, _, key = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{uri}: {bucket!r} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')")
    return Remote(scheme="s3", uri=uri, bucket=bucket, key=key)


def _parse_http(uri: str) -> Remote:
    split = urlsplit(uri)
    if not split.hostname:
        raise ValueError(f"{uri}: no host in the URL")
    if not split.path or split.path.endswith("/"):
        raise ValueError(f"{uri}: an http(s) source must name one file, not a directory")
    sha256 = None
    if split.fragment:
        algo, _, digest = split.fragment.partition("=")
        if algo != "sha256" or not _SHA256.match(digest.lower()):
            raise ValueError(f"{uri}: the only fragment understood is #sha256=<64 hex digits>")
        sha256 = digest.lower()
    return Remote(scheme=split.scheme, uri=uri, url=split._replace(fragment="").geturl(), sha256=sha256)


def parse(uri: str, kind: Kind = "model") -> Remote:
    """Parse a remote location; ValueError with one line naming what is wrong."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        raise ValueError(f"{uri}: not a URL")
    if scheme not in SCHEMES:
        raise ValueError(f"{uri}: unsupported scheme {scheme!r} (use hf://, s3://, https:// or a local path)")
    if scheme == "hf":
        return _parse_hf(uri, rest, kind)
    if scheme == "s3":
        return _parse_s3(uri, rest)
    return _parse_http(uri)


def check(location: str, kind: Kind) -> str:
    """Validator for config fields: a local path passes, a remote one must parse."""
    if is_remote(location):
        remote = parse(location, kind)
        if kind == "output" and remote.scheme not in ("hf", "s3"):
            raise ValueError(f"{location}: results can be pushed to s3:// or hf:// only")
    return location


def unpinned(location: str, kind: Kind) -> str | None:
    """Why a remote location is not pinned to exact bytes (sources.require_pins), or None when it is.

    https needs `#sha256=`, hf:// a 40-hex commit after `@`. s3:// has no pin syntax and passes: its
    files are identified by their ETags, checked on every file (the store's own word, see docs/security.md).
    """
    if not is_remote(location):
        return None
    remote = parse(location, kind)
    if remote.scheme in ("https", "http") and not remote.sha256:
        return f"{location}: not pinned; add #sha256=<64 hex digits>"
    if remote.scheme == "hf" and not (remote.revision and _COMMIT.match(remote.revision)):
        return f"{location}: not pinned; name a commit: hf://{remote.repo_id}@<40-hex commit>"
    return None
