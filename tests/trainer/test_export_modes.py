"""`kubetune model export` writes what a container's user can read: modes as the umask allows, not 0700/0600."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_export_is_readable_by_other_users(tmp_path):
    dest = tmp_path / "model"
    kubetune = Path(sys.executable).parent / "kubetune"
    subprocess.run(
        [str(kubetune), "model", "export", "builtin:smollm2-135m-instruct", str(dest)],
        check=True,
        capture_output=True,
        timeout=600,
        preexec_fn=lambda: os.umask(0o022),
    )
    modes = {p.relative_to(dest).as_posix(): p.stat().st_mode & 0o777 for p in [dest, *dest.rglob("*")]}
    assert modes.pop(".") == 0o755
    assert "model.safetensors" in modes and "config.json" in modes
    assert set(modes.values()) == {0o644}, modes
