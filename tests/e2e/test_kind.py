"""The real-cluster suite: tests/e2e/kind.sh against a kind cluster (make e2e).

Skipped, with the reason, unless KTEST_E2E=1 and kind, kubectl, helm and a working container
engine are all present: it creates a cluster and builds images, which takes 10-20 minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def missing() -> str | None:
    if os.environ.get("KTEST_E2E") != "1":
        return "the kind suite creates a cluster and builds images (10-20 min): run it with `make e2e`"
    for tool in ("kind", "kubectl", "helm"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    engine = shutil.which("docker") or shutil.which("podman")
    if not engine or subprocess.run([engine, "info"], capture_output=True).returncode != 0:
        return "no working container engine (docker or podman)"
    return None


@pytest.mark.skipif(missing() is not None, reason=str(missing()))
def test_finetunejob_on_kind_succeeds_and_leaves_a_merged_model():
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "e2e" / "kind.sh")], cwd=ROOT, text=True, capture_output=True, timeout=3600
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "e2e: OK" in proc.stdout


def test_the_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "tests" / "e2e" / "kind.sh")], check=True)
