"""The same code paths on a GPU: QLoRA on CUDA/XPU and a 1-node multi-process run (nccl/xccl).

Skipped without a GPU (this project's CI has none); run them wherever one exists:
    .venv/bin/python -m pytest -m gpu -s
They print tokens/s and peak GPU memory for the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kubetune.api import load_config

ROOT = Path(__file__).resolve().parents[2]
DATES = ROOT / "examples" / "data" / "dates" / "train.jsonl"
HAS_CUDA = torch.cuda.is_available()
HAS_XPU = hasattr(torch, "xpu") and torch.xpu.is_available()
DEVICE = "cuda" if HAS_CUDA else "xpu" if HAS_XPU else None
N_DEVICES = torch.cuda.device_count() if HAS_CUDA else (torch.xpu.device_count() if HAS_XPU else 0)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE is None, reason="needs a CUDA or XPU device")]


def _peak_mb() -> float:
    mod = torch.cuda if HAS_CUDA else torch.xpu
    return mod.max_memory_allocated() / 2**20


@pytest.mark.parametrize("quantization", ["4bit", "none"])
def test_lora_and_qlora_on_gpu(tmp_path, quantization):
    from kubetune.trainer.train import run

    sets = [
        f"data.path={DATES}",
        f"output_dir={tmp_path}",
        f"model.quantization={quantization}",
        "training.max_steps=20",
        "training.batch_size=16",
        "training.logging_steps=5",
    ]
    cfg = load_config(None, sets=sets)
    summary = run(cfg, progress="none")
    info = json.loads((tmp_path / "run.json").read_text())["resolved"]
    assert info["device"] == DEVICE and info["precision"] in {"bf16", "fp16"}
    assert summary["final_loss"] < summary["first_loss"]
    print(f"\n{DEVICE} {quantization}: {summary['tokens_per_second']:.0f} tokens/s, peak {_peak_mb():.0f} MiB")


@pytest.mark.skipif(N_DEVICES < 2, reason="needs 2 GPUs for a 2-process nccl/xccl run")
def test_two_process_run_on_gpus(tmp_path):
    env = {**os.environ, "KUBETUNE_NPROC_PER_NODE": "2", "MASTER_PORT": "29611"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.trainer.cli",
            "train",
            "--data",
            str(DATES),
            "--output-dir",
            str(tmp_path),
            "--max-steps",
            "10",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resolved"]["world_size"] == 2
    print(f"\n2x{DEVICE}: {run['metrics']['tokens_per_second']:.0f} tokens/s")
