"""What the real API server checks on the objects kubetune creates, and how it answers a refusal.

Written from the documented rules (k8s.io/apimachinery/pkg/util/validation; docs: "Object Names and IDs",
"Labels and Selectors"), not from the operator's code, so that rendered names are checked against the
server's rules and not against themselves. The emulator (kube.py) applies them.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import kmock

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")  # <= 63: most names, pod hostnames
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # <= 63: Service names
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")  # <= 253
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")  # <= 63
LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")  # <= 63, after an optional "<subdomain>/"


def _bad(regex: re.Pattern[str], limit: int, value: str) -> bool:
    return len(value) > limit or not regex.fullmatch(value)


def label_problems(labels: dict[str, str] | None, where: str) -> list[str]:
    problems = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and _bad(DNS1123_SUBDOMAIN, 253, prefix)) or _bad(LABEL_NAME, 63, name):
            problems.append(f"{where}: Invalid value: {key!r}: not a qualified label name")
        if _bad(LABEL_VALUE, 63, str(value)):
            problems.append(
                f"{where}: Invalid value: {value!r}: a valid label must be 63 characters or less, "
                "start and end with an alphanumeric character, with '-', '_' or '.' between"
            )
    return problems


def pod_spec_problems(spec: dict[str, Any], where: str) -> list[str]:
    """A pod's hostname and subdomain are DNS-1123 labels (an Indexed Job's pods get hostname <job>-<index>)."""
    return [
        f"{where}.{key}: Invalid value: {spec[key]!r}: a lowercase RFC 1123 label of at most 63 characters"
        for key in ("hostname", "subdomain")
        if spec.get(key) and _bad(DNS1123_LABEL, 63, spec[key])
    ]


def object_problems(obj: dict[str, Any]) -> list[str]:
    """Why the API server would answer 422 to creating `obj` (the subset of rules kubetune's objects meet)."""
    kind, meta = obj.get("kind", ""), obj.get("metadata") or {}
    name = meta.get("name", "")
    problems = label_problems(meta.get("labels"), "metadata.labels")
    if kind == "Service" and _bad(DNS1035_LABEL, 63, name):
        problems.append(
            f"metadata.name: Invalid value: {name!r}: a DNS-1035 label must consist of lower case "
            "alphanumeric characters or '-', start with an alphabetic character, and end with an "
            "alphanumeric character"
        )
    elif _bad(DNS1123_SUBDOMAIN, 253, name):
        problems.append(f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain")
    if kind == "Job":
        # The Job controller labels its pods job-name=<name>: the server refuses names over 63 characters.
        if len(name) > 63:
            problems.append(f"metadata.name: Invalid value: {name!r}: must be no more than 63 characters")
        template = (obj.get("spec") or {}).get("template") or {}
        problems += label_problems((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels")
        pod = template.get("spec") or {}
        problems += pod_spec_problems(pod, "spec.template.spec")
        if (obj.get("spec") or {}).get("completionMode") == "Indexed":
            last = f"{name}-{int(obj['spec'].get('completions') or 1) - 1}"
            problems += pod_spec_problems({"hostname": last}, "(pod of this Indexed Job)")
    if kind == "Pod":
        problems += pod_spec_problems(obj.get("spec") or {}, "spec")
    return problems


@attrs.frozen
class Refused(kmock.KubernetesError):
    """An error answered the way the API server does: a Status object with code, reason and message."""

    status: int
    reason: str
    message: str
    details: Any = attrs.field(factory=dict)
