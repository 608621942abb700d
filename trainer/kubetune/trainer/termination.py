"""The container's termination message: the one place Kubernetes keeps a pod's last words.

The operator reads it from the pod status (no log scraping, no API access for
workers): a JSON summary on success, `{"event": "error", ...}` with the same
one-line message the CLI prints on failure. Outside a pod the file does not
exist and nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubetune.api import contract

DEFAULT_PATH = contract.TERMINATION_LOG
LIMIT = contract.TERMINATION_LOG_LIMIT


def termination_log() -> Path:
    return Path(os.environ.get(contract.ENV_TERMINATION_LOG) or DEFAULT_PATH)


def write_termination_message(record: dict[str, Any]) -> bool:
    """Write `record` as JSON if the file exists and is writable; never raises (it is a last word)."""
    from kubetune.trainer.report import scrub

    path = termination_log()
    if not (path.exists() and os.access(path, os.W_OK)):
        return False
    record = scrub(record)  # the operator copies it into status, Events and logs: no credential in it
    text = json.dumps(record)
    if len(text) > LIMIT and "message" in record:
        # Keep the JSON valid: shorten the message, not the document.
        over = len(text) - LIMIT + 3
        text = json.dumps({**record, "message": str(record["message"])[:-over] + "..."})
    try:
        path.write_text(text[:LIMIT], encoding="utf-8")
    except OSError:
        return False
    return True
