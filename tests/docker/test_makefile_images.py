"""`make images` passes each build what its Dockerfile needs, read from the commands it would run.

The cuda image's torch must be PyPI's CUDA build: a local wheel directory holding torch 2.13.0+cpu (what
`WHEELS` mounts for the cpu image) would satisfy `torch==2.13.0` and win, so the cuda build gets none.
`CUDA_IMAGE` (the stand-in for nvidia/cuda) goes to the cuda build only.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_commands(**variables: str) -> dict[str, list[str]]:
    """Backend -> argv of its build, as `make images-dry-run` prints them with these variables."""
    argv = ["make", "-s", "images-dry-run", "ENGINE=podman", *(f"{k}={v}" for k, v in variables.items())]
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    commands = {}
    for line in out.splitlines():
        words = shlex.split(line)
        dockerfile = words[words.index("-f") + 1]
        commands[dockerfile.removeprefix("docker/Dockerfile.")] = words
    return commands


def build_args(words: list[str]) -> dict[str, str]:
    return dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--build-arg")


def volumes(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == "-v"]


def test_the_wheel_directory_goes_to_every_build_but_cuda(tmp_path):
    wheels, ca = tmp_path / "wheels", tmp_path / "ca.crt"
    wheels.mkdir()
    ca.write_text("")
    commands = build_commands(BACKEND="cpu cuda operator", WHEELS=str(wheels), BUILD_CA=str(ca))
    for backend in ("cpu", "operator"):
        assert f"{wheels}:/run/wheels:ro" in volumes(commands[backend])
        assert build_args(commands[backend])["WHEEL_DIR"] == "/run/wheels"
    cuda = commands["cuda"]
    assert not any("/run/wheels" in v for v in volumes(cuda)), cuda
    assert "WHEEL_DIR" not in build_args(cuda) and "TORCH_INDEX_URL" not in build_args(cuda)
    # The CA bundle still reaches it: pip inside needs it where TLS is intercepted.
    assert f"{ca}:/run/build-ca.crt:ro" in volumes(cuda) and build_args(cuda)["BUILD_CA"] == "/run/build-ca.crt"


def test_cuda_image_sets_the_cuda_base_only():
    commands = build_commands(BACKEND="cpu cuda", CUDA_IMAGE="localhost/debian-python:bookworm")
    assert build_args(commands["cuda"])["CUDA_IMAGE"] == "localhost/debian-python:bookworm"
    assert "CUDA_IMAGE" not in build_args(commands["cpu"])
    assert "CUDA_IMAGE" not in build_args(build_commands(BACKEND="cuda")["cuda"])  # the Dockerfile's default
