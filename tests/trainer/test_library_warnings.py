"""Warnings a user can do nothing about stay out of `kubetune` output (issue 24).

bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels" at
import on every CPU with AVX512-BF16 when the optional `kernels` package (a hub download of a kernel) is
absent; every merge and generate printed it. The real command lines run here, on a tiny random model.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tinymodel import save_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
DATES = ROOT / "examples" / "data" / "dates"
KERNELS_WARNING = "kernels-community"


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *args], capture_output=True, text=True, timeout=300
    )


def warns_at_import() -> bool:
    """Whether importing bitsandbytes logs the warning at all here (it does only with AVX512-BF16, without kernels)."""
    probe = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True, timeout=120)
    return KERNELS_WARNING in probe.stderr


@pytest.mark.slow
def test_merge_and_generate_do_not_print_the_bitsandbytes_kernels_warning(tmp_path, builtin_path):
    if not warns_at_import():
        pytest.skip("bitsandbytes does not log the kernels warning on this machine: nothing to hide")
    model = save_tiny_llama(tmp_path / "model", builtin_path)
    data = tmp_path / "train.jsonl"
    data.write_text("".join((DATES / "train.jsonl").read_text().splitlines(keepends=True)[:8]))
    out = tmp_path / "out"
    common = ["--output-dir", str(out)]
    steps = [
        ["train", "--model", str(model), "--data", str(data), "--max-steps", "2", "--set", "training.batch_size=4"],
        ["merge"],
        ["generate", "--data", str(data), "--show", "1"],
    ]
    for args in steps:
        done = kubetune(*args, *common)
        assert done.returncode == 0, done.stderr[-2000:]
        assert KERNELS_WARNING not in done.stderr + done.stdout, f"kubetune {args[0]} printed it"
