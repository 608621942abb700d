"""Remote models and data (hf://, s3://, https://) made local before anything reads them.

`fetch` turns one location into a path in the cache (downloading only what is
missing, changed or corrupt); `localize` does that for a whole TrainConfig and
returns what run.json records about each source (the resolved commit or ETags).
Local paths and `builtin:` pass through untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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


def fetch(location: str, kind: remotes.Kind = "model") -> Fetched:
    """A local path for `location`; remote ones are fetched into the cache (KUBETUNE_CACHE_DIR/sources)."""
    if not remotes.is_remote(location):
        return Fetched(location, location)
    try:
        remote = remotes.parse(location, kind)
    except ValueError as exc:
        raise UsageError(f"{kind}.path: {exc}") from None
    log.info("fetch %s", location)
    if remote.scheme == "hf":
        from kubetune.trainer.sources import hf as backend
    elif remote.scheme == "s3":
        from kubetune.trainer.sources import s3 as backend  # type: ignore[no-redef]
    else:
        from kubetune.trainer.sources import http as backend  # type: ignore[no-redef]
    local, record = backend.fetch(remote)
    log.info("fetch %s: ready in %s", location, local)
    return Fetched(location, local, {"source": location, "local": local, **record})


def localize(cfg: TrainConfig) -> tuple[TrainConfig, list[dict[str, Any]]]:
    """The same config with model and data paths local, plus one record per remote source fetched."""
    model = fetch(cfg.model.path, "model")
    data = [fetch(p, "data") for p in cfg.data.path]
    evals = [fetch(p, "data") for p in cfg.data.eval_path]
    records = [f.record for f in (model, *data, *evals) if f.record]
    if not records:
        return cfg, []
    local = cfg.model_copy(deep=True)
    local.model.path = model.local
    local.data.path = [f.local for f in data]
    local.data.eval_path = [f.local for f in evals]
    return local, records


def fetch_all(cfg: TrainConfig) -> list[dict[str, Any]]:
    """`kubetune fetch`: fill the cache for every remote source of a config; the termination message lists them."""
    from kubetune.api.contract import FetchedEvent
    from kubetune.trainer.termination import write_termination_message

    _, records = localize(cfg)
    write_termination_message(FetchedEvent(sources=[r["source"] for r in records]).model_dump(mode="json"))
    return records
