"""Build the cpu image and train 3 steps in it. Runs only where a container engine works."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def working_engine() -> str | None:
    for name in ("docker", "podman"):
        exe = shutil.which(name)
        if exe and subprocess.run([exe, "info"], capture_output=True).returncode == 0:
            return exe
    return None


ENGINE = working_engine()


@pytest.mark.slow
@pytest.mark.skipif(ENGINE is None, reason="no working container engine (docker/podman) on this machine")
def test_cpu_image_trains_three_steps(tmp_path, builtin_path):
    tag = "kubetune/trainer:cpu-test"
    subprocess.run([ENGINE, "build", "-f", "docker/Dockerfile.cpu", "-t", tag, "."], cwd=ROOT, check=True)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir(mode=0o777)
    out.chmod(0o777)  # the image runs as UID 10001
    lines = (ROOT / "examples/data/dates/train.jsonl").read_text().splitlines(keepends=True)[:12]
    (data / "train.jsonl").write_text("".join(lines))
    proc = subprocess.run(
        [ENGINE, "run", "--rm", "-v", f"{Path(builtin_path).resolve()}:/model:ro", "-v", f"{data}:/data:ro",
         "-v", f"{out}:/output", "-e", "KUBETUNE_TRAINING__MAX_STEPS=3", tag],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [json.loads(x)["step"] for x in proc.stdout.splitlines()][-1] == 3
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
