"""The device/precision table, every branch, without the hardware."""

import pytest
import torch

from kubetune.trainer.device import (
    COMPILE_MIN_SECONDS,
    Hardware,
    agree,
    choose,
    choose_compile,
    numa_nodes,
    parse_cpulist,
)

AVX2 = frozenset({"avx", "avx2", "fma"})
AMX = AVX2 | {"avx512f", "amx_bf16", "amx_tile"}
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}


def test_avx2_cpu_gets_fp32():
    p = choose(Hardware(cpu_flags=AVX2, usable_cores=2))
    assert (p.device, p.precision, p.dtype, p.threads) == ("cpu", "fp32", torch.float32, 2)
    assert "170x" in p.reason


@pytest.mark.parametrize("flags", [AMX, AVX512_BF16])
def test_cpu_with_native_bf16_gets_bf16(flags):
    assert choose(Hardware(cpu_flags=flags)).precision == "bf16"


def test_cuda_ampere_bf16_turing_fp16():
    assert choose(Hardware(cuda=True, cuda_capability=(8, 0))).precision == "bf16"
    p = choose(Hardware(cuda=True, cuda_capability=(7, 5)))
    assert (p.device, p.precision) == ("cuda", "fp16")


def test_xpu_bf16_and_preferred_over_cpu():
    p = choose(Hardware(xpu=True, cpu_flags=AVX2))
    assert (p.device, p.precision) == ("xpu", "bf16")


def test_explicit_bf16_on_avx2_cpu_is_allowed_but_warned():
    p = choose(Hardware(cpu_flags=AVX2), precision="bf16")
    assert p.precision == "bf16" and "WARNING" in p.reason


def test_fp16_on_cpu_and_missing_devices_are_errors():
    with pytest.raises(ValueError, match="fp16"):
        choose(Hardware(), precision="fp16")
    with pytest.raises(ValueError, match="cuda requested"):
        choose(Hardware(), device="cuda")
    with pytest.raises(ValueError, match="xpu requested"):
        choose(Hardware(), device="xpu")


def test_a_cuda_build_without_a_gpu_says_so_in_the_placement_line():
    """The cuda image started without a GPU: `auto` trains on the CPU and the one placement line says why."""
    p = choose(Hardware(cuda_build="13.0", cpu_flags=AVX2))
    assert (p.device, p.precision) == ("cpu", "fp32")
    assert p.reason.startswith("no GPU: torch is built for CUDA 13.0 but sees none") and "170x" in p.reason
    assert "\n" not in p.reason
    assert "no GPU" not in choose(Hardware(cpu_flags=AVX2)).reason  # a CPU-only torch expects no GPU
    assert "no GPU" not in choose(Hardware(cuda=True, cuda_build="13.0", cuda_capability=(8, 0))).reason
    with pytest.raises(
        ValueError, match=r"cuda requested but torch sees no CUDA device \(torch is built for CUDA 13\.0"
    ):
        choose(Hardware(cuda_build="13.0"), device="cuda")
    with pytest.raises(ValueError, match="CPU-only build"):
        choose(Hardware(), device="cuda")


def test_gradient_checkpointing_auto():
    assert choose(Hardware()).gradient_checkpointing is False
    assert choose(Hardware(), quantized=True).gradient_checkpointing is True
    assert choose(Hardware(cuda=True, cuda_capability=(9, 0))).gradient_checkpointing is True
    assert choose(Hardware(), gradient_checkpointing="on").gradient_checkpointing is True


def test_threads_override():
    assert choose(Hardware(usable_cores=16), threads=4).threads == 4


@pytest.mark.parametrize(
    ("chosen", "agreed"),
    [
        (["bf16", "fp32"], "fp32"),  # a CPU probe that flapped on one rank
        (["fp32", "bf16", "bf16"], "fp32"),
        (["bf16", "fp16"], "fp16"),  # an Ampere node and a Turing node
        (["bf16", "bf16"], "bf16"),
    ],
)
def test_ranks_that_disagree_all_take_the_precision_every_rank_can_run(chosen, agreed):
    mine = choose(Hardware(cpu_flags=frozenset({"avx512_bf16"}), bf16_speedup=1.1))
    place = agree(mine, chosen)
    assert place.precision == agreed
    if len(set(chosen)) > 1:
        assert "ranks disagreed" in place.reason and mine.reason in place.reason
    else:
        assert place == mine


def test_numa_nodes_are_read_from_sysfs_cpulists(tmp_path):
    for node, cpulist in (("node0", "0-3,8-11\n"), ("node1", "4-7,12-15\n"), ("node10", "16\n")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "cpulist").write_text(cpulist)
    (tmp_path / "possible").write_text("0-1\n")  # sysfs' other entries are not nodes
    (tmp_path / "node2").mkdir()  # a node whose cpulist cannot be read is left out
    assert numa_nodes(tmp_path) == [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15], [16]]
    assert numa_nodes(tmp_path / "absent") == []
    assert parse_cpulist("") == [] and parse_cpulist("5") == [5]


LONG, SHORT = COMPILE_MIN_SECONDS * 2, COMPILE_MIN_SECONDS / 2


@pytest.mark.parametrize(
    ("setting", "device", "quantized", "checkpointing", "planned", "compiler", "world", "on", "why"),
    [
        ("auto", "cpu", False, False, LONG, True, 1, True, "plan estimates 600 s"),
        ("auto", "cpu", False, False, SHORT, True, 1, False, "150 s of training"),  # the compile would not pay back
        ("auto", "cpu", False, False, None, True, 1, False, "no plan"),
        ("auto", "cpu", False, False, LONG, False, 1, False, "no C++ compiler"),
        ("auto", "cpu", True, False, LONG, True, 1, False, "quantization"),
        ("auto", "cpu", False, True, LONG, True, 1, False, "checkpointing"),
        ("auto", "cpu", False, False, LONG, True, 2, False, "multi-process"),
        ("auto", "cuda", False, False, LONG, True, 1, False, "accelerators"),
        ("on", "cpu", True, True, SHORT, True, 2, True, "set on"),
        ("on", "cuda", False, False, None, False, 1, True, "set on"),  # the GPU backend builds no C++
        ("off", "cpu", False, False, LONG, True, 1, False, "set off"),
    ],
)
def test_compile_is_on_when_asked_or_when_a_long_cpu_run_can_pay_for_it(
    setting, device, quantized, checkpointing, planned, compiler, world, on, why
):
    chosen, reason = choose_compile(setting, device, quantized, checkpointing, planned, compiler, world)
    assert chosen is on and why in reason


def test_compile_on_without_a_cpu_compiler_is_a_config_error_naming_the_way_out():
    with pytest.raises(ValueError, match=r"training.compile: on needs a C\+\+ compiler.*training.compile=off"):
        choose_compile("on", "cpu", False, False, LONG, False)
