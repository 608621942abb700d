"""Which device, which precision, how many threads, and why.

The decision is a pure function of `Hardware` facts, so every branch is unit
tested without the hardware; `detect()` is the only part that looks at the
machine. The rule that matters most: bf16 only where it is computed natively.
On an AVX2-only CPU a bf16 matmul is ~170x slower than fp32, so the seeds'
`bf16=True` on such a CPU is the slowest possible choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class Hardware:
    cuda: bool = False
    cuda_capability: tuple[int, int] | None = None
    cuda_name: str = ""
    xpu: bool = False
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    usable_cores: int = 1


@dataclass(frozen=True)
class Placement:
    device: str  # cpu | cuda | xpu
    precision: str  # fp32 | bf16 | fp16
    reason: str
    threads: int
    gradient_checkpointing: bool

    @property
    def dtype(self) -> torch.dtype:
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


def cpu_has_native_bf16(flags: frozenset[str]) -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity and the cgroup quota, not the host's count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota_file = Path("/sys/fs/cgroup/cpu.max")
    try:
        quota, period = quota_file.read_text().split()[:2]
        if quota != "max":
            cores = max(1, min(cores, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cores


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect() -> Hardware:
    cuda = torch.cuda.is_available()
    xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return Hardware(
        cuda=cuda,
        cuda_capability=torch.cuda.get_device_capability() if cuda else None,
        cuda_name=torch.cuda.get_device_name() if cuda else "",
        xpu=xpu,
        cpu_flags=_cpu_flags(),
        usable_cores=usable_cores(),
    )


def choose(
    hw: Hardware,
    device: str = "auto",
    precision: str = "auto",
    gradient_checkpointing: str = "auto",
    quantized: bool = False,
    threads: int | None = None,
) -> Placement:
    """Resolve `auto` settings; raises ValueError for a device that is not there."""
    if device == "auto":
        device = "cuda" if hw.cuda else "xpu" if hw.xpu else "cpu"
    if device == "cuda" and not hw.cuda:
        raise ValueError("training.device: cuda requested but torch sees no CUDA device")
    if device == "xpu" and not hw.xpu:
        raise ValueError("training.device: xpu requested but torch sees no XPU device")

    if precision == "auto":
        if device == "cuda":
            ok = hw.cuda_capability is not None and hw.cuda_capability >= (8, 0)
            cap = ".".join(map(str, hw.cuda_capability or ()))
            precision, reason = (
                ("bf16", f"CUDA compute capability {cap} >= 8.0 has native bf16")
                if ok
                else ("fp16", f"CUDA compute capability {cap} < 8.0 has no native bf16; fp16 with loss scaling")
            )
        elif device == "xpu":
            precision, reason = "bf16", "Intel XPUs compute bf16 natively"
        elif cpu_has_native_bf16(hw.cpu_flags):
            precision, reason = "bf16", "CPU has AMX/AVX512-BF16: bf16 matmuls run natively"
        else:
            precision, reason = "fp32", "CPU lacks AMX and AVX512-BF16: bf16 would be emulated (~170x slower)"
    else:
        reason = "set explicitly"
        if device == "cpu" and precision == "bf16" and not cpu_has_native_bf16(hw.cpu_flags):
            reason = "set explicitly; WARNING: this CPU emulates bf16 and will be much slower than fp32"
        if device == "cpu" and precision == "fp16":
            raise ValueError("training.precision: fp16 training is not supported on CPU (use fp32 or bf16)")

    if gradient_checkpointing == "auto":
        # Accelerator memory is the usual limit there; on CPU, RAM rarely is and recompute costs ~30%.
        checkpointing = device != "cpu" or quantized
    else:
        checkpointing = gradient_checkpointing == "on"
    return Placement(device, precision, reason, threads or hw.usable_cores, checkpointing)
