"""Remote models and data (hf://, s3://, https://) made local before anything reads them.

`fetch` turns one location into a path in the cache (downloading only what is
missing, changed or corrupt); `localize` does that for a whole TrainConfig and
returns what run.json records about each source (the resolved commit or ETags).
Local paths and `builtin:` pass through untouched.

"Fetched once" (a FinetuneJob's initializer, then its workers): `kubetune fetch`
writes a lock, `<cache>/sources/locks/<name>.json`, naming for each source exactly
what it resolved to (the hf commit and the hub's hash of every file; the ETag,
size and SHA-256 of every s3/https file). A process started with
KUBETUNE_SOURCES_LOCK=<name> asks no source anything: it uses the cached files the
lock names, after hashing each against it, so every node trains on the same bytes
and run.json records what they were. Without the variable, sources are resolved as
they are now.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api import contract
from kubetune.api import remote as remotes
from kubetune.api.config import TrainConfig
from kubetune.trainer.errors import UsageError

log = logging.getLogger("kubetune.fetch")


@dataclass(frozen=True)
class Fetched:
    """A location made local, and the facts about it that run.json keeps."""

    source: str
    local: str
    record: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # per-file identities, for the lock only


def _parse(location: str, kind: remotes.Kind) -> remotes.Remote:
    try:
        return remotes.parse(location, kind)
    except ValueError as exc:
        raise UsageError(f"{kind}.path: {exc}") from None


def fetch(location: str, kind: remotes.Kind = "model", locked: dict[str, Any] | None = None) -> Fetched:
    """A local path for `location`; remote ones are fetched into the cache (KUBETUNE_CACHE_DIR/sources).

    With `locked` (the lock's sources), nothing is asked of any source: the cached files must match the lock.
    """
    if not remotes.is_remote(location):
        return Fetched(location, location)
    remote = _parse(location, kind)
    if locked is not None:
        return _from_lock(remote, locked)
    log.info("fetch %s", location)
    if remote.scheme == "hf":
        from kubetune.trainer.sources import hf as backend
    elif remote.scheme == "s3":
        from kubetune.trainer.sources import s3 as backend  # type: ignore[no-redef]
    else:
        from kubetune.trainer.sources import http as backend  # type: ignore[no-redef]
    local, record = backend.fetch(remote)
    files = record.pop("file_identities", [])
    log.info("fetch %s: ready in %s", location, local)
    return Fetched(location, local, {"source": location, "local": local, **record}, files)


def _from_lock(remote: remotes.Remote, locked: dict[str, Any]) -> Fetched:
    from kubetune.trainer.errors import TransferFailed

    entry = locked.get(lock_key(remote.uri))
    if entry is None:
        raise TransferFailed(
            f"{remote.uri}: not in the sources lock {lock_path()}; run `kubetune fetch` (the initializer) again"
        )
    if remote.scheme == "hf":
        from kubetune.trainer.sources import hf

        local = hf.offline(remote, entry["record"], entry["files"])
    elif remote.scheme == "s3":
        from kubetune.trainer.sources import s3

        local = s3.offline(remote, entry["files"])
    else:
        from kubetune.trainer.sources import http

        local = http.offline(remote, entry["files"])
    log.info("fetch %s: from the sources lock, %s", remote.uri, local)
    return Fetched(remote.uri, local, {**entry["record"], "local": local, "locked": True}, entry["files"])


def lock_key(location: str) -> str:
    """A source's key in the lock: a digest, so that a credential in a URL is not written into a shared cache."""
    return hashlib.sha256(location.encode()).hexdigest()


def lock_path(name: str | None = None) -> Path:
    """<cache>/sources/locks/<name>.json; the name is a plain word (a job's uid), never a path."""
    from kubetune.trainer.sources import store

    name = name or os.environ.get(contract.ENV_SOURCES_LOCK, "")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name) or ".." in name:
        raise UsageError(f"env {contract.ENV_SOURCES_LOCK}: {name!r} is not a plain name (letters, digits, . _ -)")
    return store.cache_root() / "locks" / f"{name}.json"


def read_lock() -> dict[str, Any] | None:
    """The lock's sources when KUBETUNE_SOURCES_LOCK is set; a set name whose lock is missing is an error."""
    if not os.environ.get(contract.ENV_SOURCES_LOCK):
        return None
    path = lock_path()
    try:
        return json.loads(path.read_text())["sources"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"env {contract.ENV_SOURCES_LOCK}: cannot read the sources lock {path} ({type(exc).__name__}); "
            "run `kubetune fetch` first"
        ) from None


def write_lock(fetched: list[Fetched]) -> Path:
    """Record what every remote source resolved to; named by KUBETUNE_SOURCES_LOCK, else by the sources."""
    from kubetune.trainer.report import write_json_atomic

    sources = {lock_key(f.source): {"record": f.record, "files": f.files} for f in fetched if f.record}
    name = (
        os.environ.get(contract.ENV_SOURCES_LOCK)
        or hashlib.sha256("\n".join(sorted(sources)).encode()).hexdigest()[:16]
    )
    path = lock_path(name)
    write_json_atomic(path, {"sources": sources})
    return path


def localize_all(cfg: TrainConfig, locked: dict[str, Any] | None = None) -> tuple[TrainConfig, list[Fetched]]:
    """The same config with model and data paths local, plus what was fetched for each remote source."""
    if cfg.sources.require_pins:
        kinds = [(cfg.model.path, "model"), *[(p, "data") for p in (*cfg.data.path, *cfg.data.eval_path)]]
        for location, kind in kinds:
            if why := remotes.unpinned(location, kind):  # type: ignore[arg-type]
                raise UsageError(f"sources.require_pins: {why}")
    model = fetch(cfg.model.path, "model", locked)
    data = [fetch(p, "data", locked) for p in cfg.data.path]
    evals = [fetch(p, "data", locked) for p in cfg.data.eval_path]
    fetched = [f for f in (model, *data, *evals) if f.record]
    if not fetched:
        return cfg, []
    local = cfg.model_copy(deep=True)
    local.model.path = model.local
    local.data.path = [f.local for f in data]
    local.data.eval_path = [f.local for f in evals]
    return local, fetched


def localize(cfg: TrainConfig) -> tuple[TrainConfig, list[dict[str, Any]]]:
    """The same config with model and data paths local, plus one record per remote source (run.json's `sources`).

    Offline from the lock when KUBETUNE_SOURCES_LOCK is set (a worker after the initializer).
    """
    remote = any(remotes.is_remote(p) for p in (cfg.model.path, *cfg.data.path, *cfg.data.eval_path))
    local, fetched = localize_all(cfg, read_lock() if remote else None)
    return local, [f.record for f in fetched]


def fetch_all(cfg: TrainConfig) -> list[dict[str, Any]]:
    """`kubetune fetch`: fill the cache for every remote source of a config; the termination message lists them."""
    from kubetune.api.contract import FetchedEvent
    from kubetune.trainer.termination import write_termination_message

    _, fetched = localize_all(cfg)
    path = write_lock(fetched)
    log.info("fetch: resolved sources recorded in %s", path)
    write_termination_message(FetchedEvent(sources=[f.source for f in fetched]).model_dump(mode="json"))
    return [f.record for f in fetched]
