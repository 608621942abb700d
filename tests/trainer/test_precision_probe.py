"""precision: auto from the CPU flags and a matmul probe: flags alone can claim what the CPU won't do."""

import pytest
import torch

from kubetune.trainer import device
from kubetune.trainer.device import MIN_BF16_SPEEDUP, Hardware, choose, cpu_bf16_decision

AVX2 = frozenset({"avx", "avx2", "fma"})
AMX = AVX2 | {"avx512f", "amx_bf16", "amx_tile"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}


def test_no_flags_means_fp32_whatever_a_probe_says():
    assert cpu_bf16_decision(AVX2, 3.0) == (False, pytest.approx(cpu_bf16_decision(AVX2, None)[1]))
    assert not cpu_bf16_decision(AVX2, 3.0)[0]


@pytest.mark.parametrize("flags", [AMX, AVX512_BF16])
def test_flags_and_a_fast_probe_mean_bf16(flags):
    ok, reason = cpu_bf16_decision(flags, 12.0)
    assert ok and "12.0x as fast" in reason


def test_flags_without_a_probe_mean_bf16_and_say_not_probed():
    ok, reason = cpu_bf16_decision(AMX, None)
    assert ok and "not probed" in reason


def test_flags_that_lie_are_caught_by_the_probe():
    ok, reason = cpu_bf16_decision(AMX, 0.05)
    assert not ok and "AMX" in reason and "20.0x slower" in reason
    placed = choose(Hardware(cpu_flags=AMX, bf16_speedup=0.05))
    assert placed.precision == "fp32" and "not usable" in placed.reason


def test_threshold_is_inclusive():
    assert cpu_bf16_decision(AVX512_BF16, MIN_BF16_SPEEDUP)[0]
    assert not cpu_bf16_decision(AVX512_BF16, MIN_BF16_SPEEDUP - 0.01)[0]


def test_explicit_bf16_where_the_probe_failed_is_allowed_but_warned():
    placed = choose(Hardware(cpu_flags=AMX, bf16_speedup=0.1), precision="bf16")
    assert placed.precision == "bf16" and "WARNING" in placed.reason


def test_probe_measures_a_positive_ratio_and_restores_threads():
    threads = torch.get_num_threads()
    speedup = device.probe_bf16_speedup(size=128, repeats=2)
    assert speedup > 0 and torch.get_num_threads() == threads


def test_probe_reports_zero_when_bf16_matmul_fails(monkeypatch):
    real = device._seconds

    def refuse_bf16(a, b):
        if a.dtype == torch.bfloat16:
            raise RuntimeError("bf16 matmul refused")
        return real(a, b)

    monkeypatch.setattr(device, "_seconds", refuse_bf16)
    assert device.probe_bf16_speedup(size=64, repeats=1) == 0.0


def test_detect_probes_only_where_the_flags_claim_bf16():
    hw = device.detect()
    claims = device.cpu_has_native_bf16(hw.cpu_flags) and not (hw.cuda or hw.xpu)
    assert (hw.bf16_speedup is not None) == claims
