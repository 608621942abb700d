"""Which device, which precision, how many threads, and why.

The decision is a pure function of `Hardware` facts, so every branch is unit
tested without the hardware; `detect()` is the only part that looks at the
machine. The rule that matters most: bf16 only where it is computed natively.
On an AVX2-only CPU a bf16 matmul is ~170x slower than fp32, so the seeds'
`bf16=True` on such a CPU is the slowest possible choice.

Flags are not proof: a VM can advertise AMX/AVX512-BF16 that the hypervisor
does not pass through, and a seccomp profile can refuse the AMX permission
request, leaving oneDNN on a slower path. So where the flags say bf16, a short
matmul probe (~0.3 s) checks that bf16 is in fact not slower than fp32.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch


@dataclass(frozen=True)
class Hardware:
    cuda: bool = False
    cuda_build: str = ""  # torch.version.cuda ("13.0") where torch is a CUDA build, whether or not a GPU is seen
    cuda_capability: tuple[int, int] | None = None
    cuda_name: str = ""
    xpu: bool = False
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    usable_cores: int = 1
    # fp32 matmul time / bf16 matmul time on this CPU (>1: bf16 faster); None: not probed.
    bf16_speedup: float | None = None


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


# bf16 must be at least this fast relative to fp32 to be chosen: below it the flags lie or the
# instructions are refused (an emulated bf16 matmul is 10-170x slower, far below this line).
MIN_BF16_SPEEDUP = 0.8


def cpu_has_native_bf16(flags: frozenset[str]) -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & flags)


def cpu_bf16_decision(flags: frozenset[str], speedup: float | None) -> tuple[bool, str]:
    """bf16 on this CPU or not, and why: the flags first, then the probe where there is one."""
    if not cpu_has_native_bf16(flags):
        return False, "CPU lacks AMX and AVX512-BF16: bf16 would be emulated (~170x slower)"
    kind = "AMX" if "amx_bf16" in flags else "AVX512-BF16"
    if speedup is None:
        return True, f"CPU has {kind}: bf16 matmuls run natively (not probed)"
    if speedup < MIN_BF16_SPEEDUP:
        return False, (
            f"CPU flags say {kind} but a bf16 matmul ran {1 / max(speedup, 1e-9):.1f}x slower than fp32 "
            "(instructions not usable here: a VM or a seccomp profile?); fp32"
        )
    return True, f"CPU has {kind} and a bf16 matmul ran {speedup:.1f}x as fast as fp32"


def _seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def probe_bf16_speedup(size: int = 1024, repeats: int = 5) -> float:
    """fp32 time / bf16 time for one square matmul on one thread; 0.0 when bf16 matmul fails.

    One thread and the two dtypes interleaved, best of `repeats` each: other processes on
    the machine then disturb both alike, and the best is the least disturbed sample.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a16, b16 = a.bfloat16(), b.bfloat16()
        _seconds(a, b), _seconds(a16, b16)  # warm-up: first calls pick kernels and allocate
        times = [(_seconds(a, b), _seconds(a16, b16)) for _ in range(repeats)]
    except RuntimeError:
        return 0.0
    finally:
        torch.set_num_threads(threads)
    return min(t for t, _ in times) / min(t for _, t in times)


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


NUMA_SYSFS = Path("/sys/devices/system/node")


def parse_cpulist(text: str) -> list[int]:
    """The kernel's cpulist format ("0-3,8,10-11") as CPU numbers."""
    cpus: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def numa_nodes(root: Path = NUMA_SYSFS) -> list[list[int]]:
    """The CPUs of each NUMA node, from sysfs; [] where the kernel does not say (not Linux, no sysfs)."""
    nodes = []
    for entry in sorted(root.glob("node[0-9]*"), key=lambda p: int(p.name[4:])):
        try:
            nodes.append(parse_cpulist((entry / "cpulist").read_text()))
        except (OSError, ValueError):
            continue
    return nodes


def numa_node_count() -> int:
    """NUMA nodes this process may run on (its affinity may leave whole nodes out); 1 where unknown."""
    from kubetune.trainer.launch import numa_groups

    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return 1
    return max(1, len(numa_groups(cores, numa_nodes())))


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
    flags = _cpu_flags()
    # Probe only where it can change the answer: a CPU run whose flags claim native bf16.
    speedup = probe_bf16_speedup() if not (cuda or xpu) and cpu_has_native_bf16(flags) else None
    return Hardware(
        cuda=cuda,
        cuda_build=torch.version.cuda or "",
        cuda_capability=torch.cuda.get_device_capability() if cuda else None,
        cuda_name=torch.cuda.get_device_name() if cuda else "",
        xpu=xpu,
        cpu_flags=flags,
        usable_cores=usable_cores(),
        bf16_speedup=speedup,
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
    device, note = resolve_device(hw, device)
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
        else:
            use_bf16, reason = cpu_bf16_decision(hw.cpu_flags, hw.bf16_speedup)
            precision = "bf16" if use_bf16 else "fp32"
    else:
        reason = "set explicitly"
        if device == "cpu" and precision == "bf16" and not cpu_bf16_decision(hw.cpu_flags, hw.bf16_speedup)[0]:
            reason = "set explicitly; WARNING: bf16 matmuls on this CPU are slower than fp32 (emulated or refused)"
        if device == "cpu" and precision == "fp16":
            raise ValueError("training.precision: fp16 training is not supported on CPU (use fp32 or bf16)")

    if gradient_checkpointing == "auto":
        # Accelerator memory is the usual limit there; on CPU, RAM rarely is and recompute costs ~30%.
        checkpointing = device != "cpu" or quantized
    else:
        checkpointing = gradient_checkpointing == "on"
    reason = f"{note}; {reason}" if note else reason
    return Placement(device, precision, reason, threads or hw.usable_cores, checkpointing)


# A compile pays for itself only over enough steps: compiling a decoder layer's forward and backward once
# (dynamic in length) took up to ~25 s on 2 cores (less from inductor's cache), against 1.2-1.3x on every
# later step (SmolLM2-135M and a 1B-class Llama in bf16; docs/benchmarks.md): break-even near 2 minutes.
COMPILE_MIN_SECONDS = 300


def choose_compile(
    setting: str,
    device: str,
    quantized: bool,
    checkpointing: bool,
    planned_seconds: float | None,
    compiler: bool,
    world_size: int = 1,
) -> tuple[bool, str]:
    """Whether to torch.compile the decoder layers, and why. Raises ValueError for `on` where it cannot work."""
    if setting == "off":
        return False, "set off"
    if setting == "on":
        if device == "cpu" and not compiler:
            raise ValueError(
                "training.compile: on needs a C++ compiler on CPU (torch.compile builds C++ kernels there): "
                "install g++ or set training.compile=off"
            )
        return True, "set on"
    if device != "cpu":
        return False, "auto: off on accelerators (its gain was measured on CPUs only)"
    if quantized:
        return False, "auto: off with quantization (bitsandbytes layers break the compiled graph)"
    if checkpointing:
        return False, "auto: off with gradient checkpointing (not measured together)"
    if world_size > 1:
        return False, "auto: off in a multi-process run (not measured under DDP)"
    if not compiler:
        return False, "auto: off, no C++ compiler (g++) for torch.compile's CPU kernels"
    if planned_seconds is None:
        return False, "auto: off, no plan estimates the training time"
    if planned_seconds < COMPILE_MIN_SECONDS:
        return False, f"auto: off, the plan estimates {planned_seconds:.0f} s of training (< {COMPILE_MIN_SECONDS} s)"
    return True, f"auto: the plan estimates {planned_seconds:.0f} s of training (>= {COMPILE_MIN_SECONDS} s)"


def cpp_compiler() -> bool:
    """Whether the C++ compiler torch.compile's CPU backend calls (CXX, else g++) is on PATH."""
    return shutil.which(os.environ.get("CXX") or "g++") is not None


def resolve_device(hw: Hardware, device: str) -> tuple[str, str]:
    """The device `auto` stands for, and a note when it falls back to the CPU under a CUDA build of torch.

    The cuda image started without a GPU (no `--gpus`, no `nvidia.com/gpu`) trains on the CPU with `auto`:
    the note puts that in the placement's one log line rather than letting it pass unremarked.
    """
    ask = "is a GPU given to the container, and the NVIDIA driver installed?"
    if device == "auto":
        device = "cuda" if hw.cuda else "xpu" if hw.xpu else "cpu"
        if device == "cpu" and hw.cuda_build:
            return device, f"no GPU: torch is built for CUDA {hw.cuda_build} but sees none ({ask}); training on the CPU"
        return device, ""
    if device == "cuda" and not hw.cuda:
        hint = f"torch is built for CUDA {hw.cuda_build}: {ask}" if hw.cuda_build else "this torch is a CPU-only build"
        raise ValueError(f"training.device: cuda requested but torch sees no CUDA device ({hint})")
    if device == "xpu" and not hw.xpu:
        raise ValueError("training.device: xpu requested but torch sees no XPU device")
    return device, ""


# When ranks disagree, the first of these that some rank chose: fp32 runs everywhere, fp16 on
# every GPU, bf16 only where every rank has it.
PRECISION_FALLBACK = ("fp32", "fp16", "bf16")


def agree(place: Placement, chosen: Sequence[str]) -> Placement:
    """One precision for every rank, given what each chose on its own (`chosen[rank]`).

    DDP all-reduces gradients in the parameters' dtype, so a bf16 rank and an fp32 rank
    exchange buffers of different sizes and gloo aborts the whole job. Ranks can disagree
    on the same machine (the bf16 probe is timed, and two ranks probing at once disturb
    each other) or across nodes with different CPUs or GPUs.
    """
    if len(set(chosen)) <= 1:
        return place
    precision = next(p for p in PRECISION_FALLBACK if p in chosen)
    counts = ", ".join(f"{n} rank(s) {p}" for p, n in sorted(Counter(chosen).items()))
    reason = f"ranks disagreed ({counts}): all use {precision}, the one every rank can run; this rank: {place.reason}"
    return replace(place, precision=precision, reason=reason)
