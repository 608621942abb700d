"""One redaction for every record, log line, status message and error: credentials never travel further.

A location may carry a secret (`https://user:pass@host/...`, a presigned URL's
`X-Amz-Signature=...`, an MLflow URI with userinfo), and a library's error or
debug line may quote a header (`Authorization: Bearer ...`, `X-Amz-Security-Token`).
What comes out of here keeps the shape people need to debug (scheme, host, path,
the names of the query parameters) and none of the secret: userinfo and every
query value become `***`, known token shapes and header values are masked, and
any exact secret the caller knows (the values of HF_TOKEN, AWS_SECRET_ACCESS_KEY...)
is replaced wherever it appears. Pure: the caller passes the secrets in.
Shared by the trainer and the operator, so both mask the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
# The environment variables whose values are secrets wherever they show up (trainer and operator read them).
SECRET_ENV = (
    "HF_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "WANDB_API_KEY",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
MIN_SECRET = 6  # shorter "secrets" would mask ordinary words; no real token is this short

_URL = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://)([^\s\"'<>]*)")
_QUERY_VALUE = re.compile(r"([?&;][^=&#;\s]*=)[^&#;\s]*")
_HEADER = re.compile(
    r"(?i)\b(authorization|proxy-authorization|x-amz-security-token|x-amz-credential|x-amz-signature|"
    r"cookie|set-cookie|x-api-key|api[-_]?key|access[-_]?token|secret[-_]?access[-_]?key|session[-_]?token|"
    r"password|passwd|token)(\s*[:=]\s*|['\"]\s*:\s*['\"])(bearer\s+|basic\s+|token\s+)?[^\s'\",&#]+"
)
# Keys whose string value is a secret in a structured record (what _HEADER catches in text).
_SECRET_KEY = re.compile(
    r"(?i)(authorization|cookie|x-api-key|api[-_]?key|access[-_]?token|secret[-_]?access[-_]?key|session[-_]?token|"
    r"password|passwd|token|secret|client[-_]?secret|hf[-_]?token)"
)
_TOKENS = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16}|ghp_[A-Za-z0-9]{20,}|xox[abp]-[\w-]{10,})\b")


def _url(match: re.Match[str]) -> str:
    scheme, rest = match[1], match[2]
    authority, slash, tail = rest.partition("/")
    if "@" in authority:  # user:password@host: keep the host only
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    if not slash and "?" in authority:
        authority, _, query = authority.partition("?")
        tail, slash = "?" + query, ""
    return scheme + authority + slash + _QUERY_VALUE.sub(rf"\1{MASK}", tail)


# Query keys that carry a credential: presigned S3/GCS/Azure URLs, API keys and tokens. Logs mask every query
# value anyway (`redact`); this list decides what a URL may not carry where it is stored in the clear.
_CREDENTIAL_KEY = re.compile(r"(sig|signature|token|secret|password|passwd|key|auth|credential|session)", re.I)


def carries_credential(url: str) -> bool:
    """A URL with userinfo, or a query key that names a credential (`?download=true` does not)."""
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        return True
    return any(_CREDENTIAL_KEY.search(k) for k, _ in parse_qsl(parts.query, keep_blank_values=True))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL credentials, query values, credential headers, token shapes and `secrets` masked."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL.sub(_url, text)
    text = _HEADER.sub(lambda m: f"{m[1]}{m[2]}{m[3] or ''}{MASK}", text)
    return _TOKENS.sub(MASK, text)


def redact_value(value: Any, secrets: Iterable[str] = ()) -> Any:
    """The same for a JSON-like value: every string inside dicts and lists (keys included) is redacted."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):  # a value under a credential's name ({"token": ...}) is masked whole
        return {
            redact_value(k, secrets): MASK
            if isinstance(k, str) and isinstance(v, str) and v and _SECRET_KEY.fullmatch(k)
            else redact_value(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_value(v, secrets) for v in value]
    return value


def env_secrets(environ: dict[str, str] | Any, names: Iterable[str] = SECRET_ENV) -> list[str]:
    """The values of the secret variables present in `environ` (a mapping: pure)."""
    return [environ[n].strip() for n in names if environ.get(n, "").strip()]
