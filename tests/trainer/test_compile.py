"""training.compile=on: the decoder layers really are compiled, and they train as the uncompiled model does.

Two `kubetune train` runs on the tiny random Llama, pinned to fp32 (fusion reorders float arithmetic, so the
comparison needs fp32's tolerance), each with inductor's cache in a directory of its own. That cache is the
independent witness: a compiled run leaves the C++ kernels inductor generated there, an eager run leaves
nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from precision_modes import child_env
from safetensors.torch import load_file

from kubetune.trainer.device import cpp_compiler

ROOT = Path(__file__).resolve().parents[2]
DATES = ROOT / "examples" / "data" / "dates" / "train.jsonl"
STEPS = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not cpp_compiler(), reason="torch.compile on CPU needs a C++ compiler (g++)"),
]


def train(tmp: Path, model: Path, data: Path, compile_setting: str) -> tuple[Path, Path]:
    out, cache = tmp / f"out-{compile_setting}", tmp / f"inductor-{compile_setting}"
    sets = [
        f"model.path={model}",
        f"data.path={data}",
        "training.precision=fp32",
        f"training.max_steps={STEPS}",
        "training.batch_size=4",
        "training.logging_steps=1",
        f"training.compile={compile_setting}",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", "train", "--output-dir", str(out)]
        + [a for s in sets for a in ("--set", s)],
        capture_output=True,
        text=True,
        env=child_env(TORCHINDUCTOR_CACHE_DIR=str(cache)),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out, cache


def losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("event") == "progress"]


def generated_kernels(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.suffix in (".cpp", ".so")] if cache.exists() else []


def test_compiled_layers_train_like_eager_ones_and_save_the_same_adapter(tmp_path, builtin_path):
    from tinymodel import save_tiny_llama

    model = save_tiny_llama(tmp_path / "model", builtin_path)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(DATES.read_text().splitlines(keepends=True)[: 4 * STEPS]))
    eager, eager_cache = train(tmp_path, model, data, "off")
    compiled, compiled_cache = train(tmp_path, model, data, "on")

    assert generated_kernels(eager_cache) == []
    assert generated_kernels(compiled_cache), f"nothing compiled into {compiled_cache}"
    assert json.loads((compiled / "run.json").read_text())["resolved"]["compile"] is True

    assert len(losses(eager)) == STEPS
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    a = load_file(eager / "adapter" / "adapter_model.safetensors")
    b = load_file(compiled / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()  # compiled in place: no `_orig_mod.` in any key
    worst = max((a[k] - b[k]).abs().max().item() / max(a[k].abs().max().item(), 1e-8) for k in a)
    assert worst < 1e-3, worst
