"""Whether a FinetuneJob's spec can run: the schema, then the rules across fields the schema cannot say.

Every problem at once, each naming its field (`spec.training.lr: ...`), so one status message lists all.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any

from pydantic import ValidationError

from kubetune.api import backends, quantity
from kubetune.api.finetunejob import QUEUED_SUSPEND_MESSAGE, SOURCES_ERROR, FinetuneJobSpec
from kubetune.api.redact import carries_credential, redact
from kubetune.operator.settings import PodSettings

PINNED_HF = re.compile(r"hf://[^@]+@[0-9a-f]{40}(/.*)?")  # a model repo at one commit: its code cannot change


def spec_problems(raw: dict[str, Any]) -> tuple[FinetuneJobSpec | None, list[str]]:
    """Parse the spec; every problem at once, each naming its field (`spec.training.lr: ...`)."""
    try:
        spec = FinetuneJobSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if err["type"] == SOURCES_ERROR:  # the claims the paths need: each problem names its own field
                problems.extend(err["ctx"]["problems"])
                continue
            where = ".".join(str(p) for p in ("spec", *err["loc"]))
            problems.append(f"{where}: {err['msg']}")
        return None, problems
    problems = quantity_problems(spec)
    if spec.scheduling.queue_name and spec.run_policy.suspend:
        problems.append(QUEUED_SUSPEND_MESSAGE)
    backend = backends.get(spec.backend)
    collective = spec.training.distributed.backend
    if collective != "auto" and collective not in backend.collectives:
        problems.append(
            f"spec.training.distributed.backend: {spec.training.distributed.backend!r} does not run on backend "
            f"{spec.backend!r} (leave it 'auto')"
        )
    if backend.device and spec.training.training.device not in ("auto", spec.backend):
        problems.append(
            f"spec.training.training.device: {spec.training.training.device!r} on backend {spec.backend!r} "
            "would leave the requested accelerator idle"
        )
    return (spec if not problems else None), problems


def quantity_problems(spec: FinetuneJobSpec) -> list[str]:
    """spec.resources values the API server would refuse at the worker Job's create (a 422), named here first."""
    if spec.resources is None:
        return []
    problems = []
    for kind, values in (("requests", spec.resources.requests), ("limits", spec.resources.limits)):
        for name, value in values.items():
            try:
                parsed = quantity.parse(value)
            except ValueError as exc:
                problems.append(f"spec.resources.{kind}.{name}: {exc}")
                continue
            if parsed < 0:  # the API server takes a negative quantity here; the trainer's --memory refuses it
                problems.append(f"spec.resources.{kind}.{name}: {value!r} is negative")
    return problems


def credential_problems(value: Any, where: str) -> list[str]:
    """Every URL in the trainer config that carries a credential (userinfo, a query value: what
    kubetune.api.redact masks). The config becomes a ConfigMap readable with `view`, and the spec itself is
    no place for a secret: it is stored and shown in the clear. One line per field, the URL masked."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in credential_problems(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in credential_problems(v, f"{where}[{i}]")]
    if isinstance(value, str) and "://" in value and carries_credential(value):
        return [
            f"{where}: {redact(value)!r} carries a credential in the URL (userinfo or query); give it through a "
            "Secret instead (spec.sources.s3CredentialsSecret, spec.httpTokenSecret, spec.hfTokenSecret)"
        ]
    return []


def _any(value: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


def policy_problems(spec: FinetuneJobSpec, namespace: str, settings: PodSettings) -> list[str]:
    """What the operator's policy (chart `policy`, settings.Policy) forbids in this spec, one line per field."""
    policy, problems = settings.policy, []
    trainer_images = tuple(settings.images.values())
    if spec.image and spec.image not in trainer_images and not _any(spec.image, policy.images):
        problems.append(f"spec.image: {spec.image!r} is not an allowed trainer image (chart policy.images)")
    secrets = [
        ("spec.sources.s3CredentialsSecret", spec.sources.s3_credentials_secret if spec.sources else None),
        ("spec.hfTokenSecret.name", spec.hf_token_secret.name if spec.hf_token_secret else None),
        ("spec.httpTokenSecret.name", spec.http_token_secret.name if spec.http_token_secret else None),
    ]
    for where, name in secrets:
        if name and not _any(f"{namespace}/{name}", policy.secrets):
            problems.append(f"{where}: Secret {name!r} may not be used in namespace {namespace!r} (policy.secrets)")
    priority = spec.scheduling.priority_class_name
    if priority and not (
        _any(priority, policy.priority_classes) if policy.priority_classes else not priority.startswith("system-")
    ):
        problems.append(f"spec.scheduling.priorityClassName: {priority!r} is not allowed (policy.priorityClasses)")
    for i, toleration in enumerate(spec.scheduling.tolerations or []):
        key = str((toleration or {}).get("key") or "")
        if not key or (policy.toleration_keys and not _any(key, policy.toleration_keys)):
            problems.append(
                f"spec.scheduling.tolerations[{i}]: a toleration of key {key or '(any)'!r} is not allowed "
                "(policy.tolerationKeys; a key-less toleration tolerates every taint)"
            )
    return problems + _remote_code_problems(spec, settings)


def _remote_code_problems(spec: FinetuneJobSpec, settings: PodSettings) -> list[str]:
    """trust_remote_code runs the checkpoint's code with the job's credentials in reach: off unless allowed,
    and then only from a model pinned to one commit (a local claim is the administrator's own)."""
    model = spec.training.model
    if not model.trust_remote_code:
        return []
    where = "spec.training.model.trust_remote_code"
    if not settings.policy.remote_code:
        return [f"{where}: remote code is not allowed by the operator's policy (policy.allowRemoteCode)"]
    if "://" in model.path and not PINNED_HF.fullmatch(model.path):
        return [f"{where}: needs model.path pinned to a commit (hf://org/name@<40-hex sha>), got {model.path!r}"]
    return []
