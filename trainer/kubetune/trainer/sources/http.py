"""https:// (and http://) sources: one file, fetched with Range requests into the cache (see store.py).

Integrity: the size from Content-Length always; the MD5 when the server's ETag is
one; the SHA-256 when the URL states it (`...#sha256=<hex>`, the fragment is
never sent). Plain http:// works (in-cluster mirrors) but only the hash fragment
protects it from tampering.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from kubetune.api.remote import Remote
from kubetune.trainer.errors import KubetuneError, SourceDenied, SourceMissing, TransferFailed
from kubetune.trainer.sources import store

TIMEOUT = (10, 60)  # connect, read (seconds)


def _status_error(status: int, what: str) -> KubetuneError:
    if status in (404, 410):
        return SourceMissing(f"{what}: no such file (HTTP {status})")
    if status in (401, 403):
        return SourceDenied(f"{what}: access denied (HTTP {status})")
    return TransferFailed(f"{what}: server answered HTTP {status}")


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
                yield from response.iter_content(store.CHUNK)
        except requests.RequestException as exc:
            raise TransferFailed(f"{remote.uri}: connection failed: {type(exc).__name__}") from None

    return open_from


def fetch(remote: Remote) -> tuple[str, dict[str, Any]]:
    import requests

    session = requests.Session()
    size, etag = _probe(session, remote)
    name = unquote(PurePosixPath(urlsplit(remote.url).path).name)
    file = store.RemoteFile(name, size, etag, _opener(session, remote, etag), sha256=remote.sha256)
    entry = store.entry_dir("https", remote.url, f"{urlsplit(remote.url).hostname}/{name}")
    with store.locked(entry):
        target = store.sync(entry, [file], remote.uri)
    manifest = store.read_manifest(entry)
    return str(target / name), {"etag": etag, "bytes": size, "sha256": manifest.get(name, {}).get("sha256")}
