"""The container engine the tests use: docker or podman, whichever works here, with the flags it needs.

The Makefile picks the same engine and the same podman flags (`ENGINE`, `PODMAN_FLAGS`): podman run as
root without CAP_SYS_RESOURCE (CI sandboxes, this machine) needs runc and limits it does not have to raise.
`KTEST_ENGINE` and `KTEST_ENGINE_FLAGS` override both. The images are built by `make images`
(.ci/run does it before pytest); tests that need them skip, saying so, where they are missing, except
with KTEST_REQUIRE_IMAGES=1 (.ci/run), where a missing engine or image is an error, not a skip.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

TRAINER_IMAGE = "kubetune/trainer:cpu-0.1.0"
OPERATOR_IMAGE = "kubetune/operator:0.1.0"
IMAGE_UID = 10001  # the images' USER
REQUIRE_ENV = "KTEST_REQUIRE_IMAGES"


@functools.cache
def engine() -> str | None:
    """The first of docker, podman whose `info` succeeds (a docker client with no daemon does not count)."""
    names = [os.environ["KTEST_ENGINE"]] if os.environ.get("KTEST_ENGINE") else ["docker", "podman"]
    for name in names:
        exe = shutil.which(name)
        if exe and subprocess.run([exe, "info"], capture_output=True, timeout=60).returncode == 0:
            return exe
    return None


@functools.cache
def flags() -> list[str]:
    """Flags for every `build` and `run`: runc and explicit ulimits for podman (see docs in the Makefile)."""
    if "KTEST_ENGINE_FLAGS" in os.environ:
        return shlex.split(os.environ["KTEST_ENGINE_FLAGS"])
    exe = engine()
    if not exe or os.path.basename(exe) != "podman":
        return []
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    return [*runtime, "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def image_id(tag: str) -> str | None:
    exe = engine()
    if not exe:
        return None
    proc = subprocess.run([exe, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    return proc.stdout.strip()[:12] if proc.returncode == 0 else None


def unavailable(*tags: str) -> str | None:
    """None when these images can be run here, else why not (for a skip reason); an error if they must run."""
    reason = None
    if engine() is None:
        reason = "no working container engine: neither `docker info` nor `podman info` succeeds here"
    elif missing := [t for t in tags if image_id(t) is None]:
        reason = f"image(s) {', '.join(missing)} not built: run `make images BACKEND='cpu operator'` (README)"
    if reason and os.environ.get(REQUIRE_ENV) == "1":
        raise RuntimeError(f"{REQUIRE_ENV}=1, but {reason}")
    return reason


def run_argv(*args: str) -> list[str]:
    """`<engine> run <flags> <args>`: the start of every container command line in the tests."""
    exe = engine()
    assert exe, "no container engine"
    return [exe, "run", *flags(), *args]


@functools.cache
def exported_model(base: Path) -> Path:
    """README's first step, `kubetune model export`, once per test session: what users mount at /model.

    Not the builtin's cache: an export made by an older kubetune there may not be readable by UID 10001.
    """
    dest = base / "exported-model"
    kubetune = Path(sys.executable).parent / "kubetune"
    argv = [str(kubetune), "model", "export", "builtin:smollm2-135m-instruct", str(dest)]
    subprocess.run(argv, check=True, capture_output=True, timeout=900)
    return dest
