"""The shared entrypoint, outside a container: temporary dirs stand in for /model, /data and /output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import precision_modes
import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def container_env(**extra: str) -> dict[str, str]:
    """What an image's environment holds (KUBETUNE_CONTAINER=1), with this venv's kubetune on PATH."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBETUNE_", "HF_TOKEN")) or k in {"KUBETUNE_CACHE_DIR", precision_modes.ENV}
    }
    return {
        **keep,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "KUBETUNE_CONTAINER": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def fake_kubetune(tmp_path: Path) -> str:
    """A stand-in `kubetune` that shows what the entrypoint handed over."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubetune"
    script.write_text('#!/bin/sh\necho "args=$*"\necho "token=${HF_TOKEN:-}"\n')
    script.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_token_file_is_exported_and_arguments_pass_through(tmp_path):
    token = tmp_path / "token"
    token.write_text("hf_secret")
    env = container_env(PATH=fake_kubetune(tmp_path), HF_TOKEN_FILE=str(token))
    out = subprocess.run(
        ["sh", str(ENTRYPOINT), "merge", "--output-dir", "/output"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == ["args=merge --output-dir /output", "token=hf_secret"]


def test_unreadable_token_file_is_a_clear_error(tmp_path):
    env = container_env(PATH=fake_kubetune(tmp_path), HF_TOKEN_FILE=str(tmp_path / "missing"))
    proc = subprocess.run(["sh", str(ENTRYPOINT), "train"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "HF_TOKEN_FILE" in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_entrypoint_runs_a_real_training_from_the_mounts(tmp_path, builtin_path):
    mounts = tmp_path / "mnt"
    (mounts / "data").mkdir(parents=True)
    (mounts / "output").mkdir()
    (mounts / "model").symlink_to(builtin_path)  # stands in for `-v MODEL:/model:ro`
    dates = (ROOT / "examples" / "data" / "dates" / "train.jsonl").read_text().splitlines(keepends=True)
    (mounts / "data" / "train.jsonl").write_text("".join(dates[:8]))
    env = container_env(
        KUBETUNE_MOUNT_ROOT=str(mounts),
        KUBETUNE_TRAINING__MAX_STEPS="2",
        KUBETUNE_TRAINING__BATCH_SIZE="4",
        KUBETUNE_LORA__R="4",
    )
    proc = subprocess.run(
        ["sh", str(ENTRYPOINT), "train"], env=env, cwd=mounts / "output", capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(x)["event"] for x in proc.stdout.splitlines()] == ["progress", "progress"]
    assert (mounts / "output" / "adapter" / "adapter_model.safetensors").is_file()
    config = json.loads((mounts / "output" / "run.json").read_text())["config"]
    assert config["model"]["path"] == f"{mounts}/model" and config["data"]["path"] == [f"{mounts}/data"]
