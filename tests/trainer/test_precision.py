"""Both CPU precisions trained for real: the loss goes down and a resumed run ends where an uninterrupted one does.

bf16 runs only where this CPU computes it natively (AMX or AVX512-BF16); fp32 runs everywhere. Each
test pins its precision, so the suite checks the same things on either kind of CPU and under
KUBETUNE_TRAINING__PRECISION forced either way.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from precision_modes import RESUME_DRIFT, child_env, needs_native_bf16
from safetensors.torch import load_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_native_bf16)]),
]
DATES = Path(__file__).resolve().parents[2] / "examples" / "data" / "dates" / "train.jsonl"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(DATES.read_text().splitlines(keepends=True)[:48]))
    return path


def train(data: Path, out: Path, precision: str, *more: str, code: int = 0) -> subprocess.CompletedProcess:
    argv = [
        "train",
        "--data",
        str(data),
        "--output-dir",
        str(out),
        "--precision",
        precision,
        "--batch-size",
        "4",
        "--lr",
        "1e-3",
        "--set",
        "training.warmup_ratio=0",
        "--set",
        "training.logging_steps=1",
        "--set",
        "lora.r=8",
        "--progress",
        "json",
        *more,
    ]
    env = child_env(KUBETUNE_LOG_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", *argv], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def norm(tensors: dict[str, torch.Tensor]) -> float:
    """The Euclidean norm of a set of tensors taken as one vector (in fp64)."""
    return float(sum((t.double() ** 2).sum() for t in tensors.values()) ** 0.5)


def test_loss_goes_down_and_resume_ends_where_the_whole_run_does(data, tmp_path, precision):
    out = tmp_path / "run"
    train(data, out, precision, "--max-steps", "6", "--set", "training.save_steps=3")
    run = json.loads((out / "run.json").read_text())
    assert run["resolved"]["precision"] == precision
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    loss = [m["loss"] for m in metrics if m["event"] == "progress"]
    assert len(loss) == 6 and loss[-1] < loss[0] * 0.8, loss
    whole = load_file(out / "adapter" / "adapter_model.safetensors")

    # Lose everything after step 3, as a preempted pod would, then run the same command again.
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    shutil.rmtree(out / "adapter")
    resumed = train(data, out, precision, "--max-steps", "6", "--set", "training.save_steps=3")
    assert [json.loads(x)["step"] for x in resumed.stdout.splitlines()] == [4, 5, 6]
    assert json.loads((out / "run.json").read_text())["resumed_from"].endswith("checkpoint-3")
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert again.keys() == whole.keys() and all(again[k].dtype == whole[k].dtype for k in whole)
    # The same data order, optimizer state and schedule: the resumed run ends where the whole one did, up to
    # the summation order of the BLAS library (RESUME_DRIFT); a resume that lost any of them lands ~1000x away.
    at_3 = load_file(out / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    drift = norm({k: again[k] - whole[k] for k in whole}) / norm({k: whole[k] - at_3[k] for k in whole})
    assert drift < RESUME_DRIFT[precision], drift

    # Another seed is another data order: resuming would skip the wrong records, so it is refused.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    refused = train(data, out, precision, "--max-steps", "9", "--set", "training.seed=7", code=2)
    assert "checkpoint-6 was written by a different run (order changed)" in refused.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
