"""The trainer backends: one row per backend, read by the CRD schema, the operator, the chart and the tests.

A backend is an image (docker/Dockerfile.<name>) plus the facts the operator needs about it: the
collectives that image can run, the accelerator a worker pod asks for, and the default resources of a
worker pod when a FinetuneJob gives none. Adding a backend is adding a row here (and its Dockerfile).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# The literal spelled out once for pydantic/the CRD enum; `test_backends` checks it matches TABLE.
BackendName = Literal["cpu", "cpu-ccl", "xpu", "cuda"]
DEFAULT_VERSION = "0.1.0"
DEFAULT_REPOSITORY = "kubetune/trainer"


@dataclass(frozen=True)
class Backend:
    name: str
    description: str  # one line, shown in values.yaml and the CRD
    collectives: frozenset[str]  # what distributed.backend may be besides "auto"
    device: str | None  # the extended resource a worker asks for, None on CPU
    # Quantities as strings: what the kubernetes client's models accept (an int is refused client-side).
    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)

    @property
    def image(self) -> str:
        """The default image, as `make images` tags it."""
        return f"{DEFAULT_REPOSITORY}:{self.name}-{DEFAULT_VERSION}"

    @property
    def image_var(self) -> str:
        """The operator's environment variable overriding the image (set by the chart)."""
        return "KUBETUNE_IMAGE_" + self.name.upper().replace("-", "_")

    def resources(self) -> dict[str, dict[str, str]]:
        return {"requests": dict(self.requests), "limits": dict(self.limits)}


# The cpu defaults fit a laptop cluster (kind/minikube with 2 CPUs, 4-8 GiB) and the builtin 135M model;
# larger models set spec.resources. The accelerator backends ask for one device per worker pod.
TABLE: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "cpu",
            "Any x86 CPU, gloo collectives.",
            frozenset({"gloo"}),
            None,
            requests={"cpu": "1", "memory": "2Gi"},
            limits={"memory": "6Gi"},
        ),
        Backend(
            "cpu-ccl",
            "Xeon with oneCCL collectives (several processes per node).",
            frozenset({"gloo", "ccl"}),
            None,
            requests={"cpu": "8", "memory": "32Gi"},
            limits={"memory": "64Gi"},
        ),
        Backend(
            "xpu",
            "Intel GPUs (Data Center GPU Max / Arc), xccl collectives.",
            frozenset({"gloo", "xccl"}),
            "gpu.intel.com/i915",
            requests={"cpu": "4", "memory": "32Gi"},
            limits={"gpu.intel.com/i915": "1", "memory": "64Gi"},
        ),
        Backend(
            "cuda",
            "NVIDIA GPUs, nccl collectives.",
            frozenset({"gloo", "nccl"}),
            "nvidia.com/gpu",
            requests={"cpu": "4", "memory": "32Gi"},
            limits={"nvidia.com/gpu": "1", "memory": "64Gi"},
        ),
    )
}
NAMES: tuple[str, ...] = tuple(TABLE)


def get(name: str) -> Backend:
    return TABLE[name]
