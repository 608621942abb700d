"""https:// (and http://) sources: one file, fetched with Range requests into the cache (see store.py).

Integrity: the size from Content-Length always; the MD5 when the server's ETag is
one; the SHA-256 when the URL states it (`...#sha256=<hex>`, the fragment is
never sent). Plain http:// works (in-cluster mirrors) but only the hash fragment
protects it from tampering.

What a hostile or broken server cannot do here: have a file accepted whose end
cannot be known (no Content-Length, unless a SHA-256 is pinned), splice a changed
file onto an old partial (no ETag: no resume), send more bytes than it announced,
have a compressed body decoded into an unbounded file (bytes are written as sent,
and a Content-Encoding we did not ask for is refused), or downgrade https to http
with a redirect. A private server's token comes from a mounted Secret
(KUBETUNE_HTTP_TOKEN_FILE), goes only to https URLs as `Authorization`, which
requests drops when a redirect leaves the host.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from kubetune.api import contract
from kubetune.api.remote import Remote
from kubetune.trainer.errors import KubetuneError, SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import store

TIMEOUT = (10, 60)  # connect, read (seconds)
_AUTH_SCHEMES = ("bearer ", "basic ", "token ")


def _status_error(status: int, what: str) -> KubetuneError:
    if status in (404, 410):
        return SourceMissing(f"{what}: no such file (HTTP {status})")
    if status in (401, 403):
        return SourceDenied(f"{what}: access denied (HTTP {status})")
    return TransferFailed(f"{what}: server answered HTTP {status}")


def token() -> str | None:
    """The Authorization value in KUBETUNE_HTTP_TOKEN_FILE (a mounted Secret); a bare token becomes `Bearer <token>`."""
    path = os.environ.get(contract.ENV_HTTP_TOKEN_FILE)
    if not path:
        return None
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SourceDenied(f"{contract.ENV_HTTP_TOKEN_FILE} {path}: cannot read the token: {exc.strerror}") from None
    if not value:
        return None
    return value if value.lower().startswith(_AUTH_SCHEMES) else f"Bearer {value}"


def session(remote: Remote) -> Any:
    """A requests session that refuses https -> http redirects and carries the token to https only."""
    import requests

    class Session(requests.Session):
        def get_redirect_target(self, resp: Any) -> str | None:
            target = super().get_redirect_target(resp)
            if target and urlsplit(resp.url).scheme == "https" and urlsplit(target).scheme == "http":
                raise store.UnsafeSource(f"{remote.uri}: the server redirects https to plain http; refused")
            return target

    s = Session()
    auth = token()
    if auth and remote.scheme == "https":
        s.headers["Authorization"] = auth
    return s


def _probe(session: Any, remote: Remote) -> tuple[int | None, str | None]:
    """Size and ETag from a HEAD request (following redirects)."""
    import requests

    try:
        response = session.head(remote.url, allow_redirects=True, timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise TransferFailed(f"{remote.uri}: cannot connect: {type(exc).__name__}") from None
    if response.status_code >= 400:
        raise _status_error(response.status_code, remote.uri)
    length = response.headers.get("Content-Length")
    etag = response.headers.get("ETag")
    return (int(length) if length and length.isdigit() else None), (
        etag.strip('"').removeprefix("W/") if etag else None
    )


def _opener(session: Any, remote: Remote, etag: str | None) -> Any:
    def open_from(offset: int) -> Iterator[bytes]:
        import requests
        import urllib3

        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if etag:
                headers["If-Range"] = f'"{etag}"'
        try:
            with session.get(remote.url, headers=headers, stream=True, timeout=TIMEOUT) as response:
                if response.status_code >= 400:
                    raise _status_error(response.status_code, remote.uri)
                if offset and response.status_code != 206:
                    raise store.RangeIgnored(f"{remote.uri}: the server sent the whole file, not the missing part")
                encoding = response.headers.get("Content-Encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise store.UnsafeSource(
                        f"{remote.uri}: the server sent a {encoding}-encoded body although identity was asked; refused"
                    )
                yield from response.raw.stream(store.CHUNK, decode_content=False)  # the bytes as sent, never inflated
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:  # a cut stream is urllib3's
            raise TransferFailed(f"{remote.uri}: connection failed: {type(exc).__name__}") from None

    return open_from


def _entry(remote: Remote) -> tuple[Path, str]:
    """The cache entry of a URL and the file's name in it (unquoted: the store checks it stays inside)."""
    name = unquote(PurePosixPath(urlsplit(remote.url).path).name)
    return store.entry_dir("https", remote.url, f"{urlsplit(remote.url).hostname}/{name}"), name


def offline(remote: Remote, files: list[dict[str, Any]]) -> str:
    """A locked URL's local path, checked against the lock; the server is not asked."""
    entry, name = _entry(remote)
    store.offline(entry / "files", files, remote.uri)
    return str(entry / "files" / name)


def fetch(remote: Remote) -> tuple[str, dict[str, Any]]:
    entry, name = _entry(remote)
    store.inside(entry / "files", name, remote.uri)  # before any request: a name that climbs out is refused
    s = session(remote)
    size, etag = _probe(s, remote)
    if size is None and not remote.sha256:
        raise store.UnsafeSource(
            f"{remote.uri}: the server gives no Content-Length, so a cut download cannot be told from a whole one; "
            "pin the file with #sha256=<hex> to use it"
        )
    file = store.RemoteFile(name, size, etag, _opener(s, remote, etag), sha256=remote.sha256)
    with store.locked(entry):
        target = store.sync(entry, [file], remote.uri)
    manifest = store.read_manifest(entry)
    sha256 = manifest.get(name, {}).get("sha256")
    record = {"etag": etag, "bytes": size, "sha256": sha256}
    return str(target / name), {**record, "file_identities": [store.identity(file, sha256)]}
