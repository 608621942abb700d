"""Which training precision the test suite runs with, and what each precision lets a test expect.

`precision: auto` picks bf16 on CPUs with AMX/AVX512-BF16 and fp32 elsewhere, so an unpinned
test trains differently on different CI machines. Tests therefore either pin the precision they
are about, or take their tolerance from the precision a run actually used (run.json records it).
`KUBETUNE_TRAINING__PRECISION=fp32|bf16` (the config layer's own variable) forces it for every
training run the trainer tests start, in-process or as a subprocess; see docs/contributors/testing.md.
"""

from __future__ import annotations

import os

import pytest

ENV = "KUBETUNE_TRAINING__PRECISION"

# Relative agreement of per-step losses between runs that differ only in float summation order
# (2 processes vs 1 at the same global batch). fp32 agrees to ~1e-6; bf16 keeps 8 bits of mantissa
# (unit roundoff 2^-9 ~ 0.2%) and the rounding compounds over steps: measured 0.5-2.3% at steps 1-4.
LOSS_RTOL = {"fp32": 1e-4, "bf16": 5e-2}

# How far a resumed run's adapter may end from the uninterrupted run's, as a fraction of what the steps after
# the checkpoint changed (the norm of the difference over the norm of the update). Equal arithmetic gives 0,
# but BLAS libraries promise equal sums run to run only in their reproducibility modes (MKL's CNR is off in
# torch), and one fp32 resume on an AMD EPYC differed in the last bits once. Measured on the 48-record dates
# test, resuming at step 3 of 6 with 1 thread instead of 2 (summation order only): fp32 7e-6, bf16 3.4e-3;
# resuming without the optimizer state (a broken resume): 3.8 in both.
RESUME_DRIFT = {"fp32": 1e-3, "bf16": 5e-2}


def forced() -> str | None:
    """The precision the suite was asked to force, or None (each machine's `auto`)."""
    value = os.environ.get(ENV, "").strip()
    return value if value and value != "auto" else None


def sets() -> list[str]:
    """`--set`-style overrides for in-process runs (load_config does not read os.environ)."""
    return [f"training.precision={forced()}"] if forced() else []


def forced_env() -> dict[str, str]:
    """The forced precision as a container's environment (containers get only the env they are given)."""
    return {ENV: forced()} if forced() else {}


def forced_training() -> dict[str, str]:
    """The forced precision as a FinetuneJob's spec.training.training entry."""
    return {"precision": forced()} if forced() else {}


def child_env(**extra: str) -> dict[str, str]:
    """A subprocess environment without the caller's KUBETUNE_* settings, except the cache and the forced precision."""
    keep = {"KUBETUNE_CACHE_DIR", ENV}
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_") or k in keep}
    env.update(extra)
    return env


def cpu_runs_bf16_natively() -> bool:
    from kubetune.trainer.device import cpu_has_native_bf16, detect

    return cpu_has_native_bf16(detect().cpu_flags)


needs_native_bf16 = pytest.mark.skipif(
    not cpu_runs_bf16_natively(),
    reason="this CPU has neither AMX nor AVX512-BF16: bf16 would be emulated (~170x slower than fp32)",
)
