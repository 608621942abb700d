"""The built cpu and operator images, run the way README says. Skipped, with the reason, where no engine
works or the images are not built (`make images BACKEND='cpu operator'`; .ci/run builds them first).

The trainer image: README's flow (`kubetune model export`, then train, merge and generate in the image
with the mounts, UID 10001, a read-only root and no network); `<engine> stop` during training gives exit
75 and a complete checkpoint that the next run resumes from; unusable mounts are named. The operator
image: no torch, UID 10001, and its health and metrics endpoints served against an API server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import engine
import precision_modes
import pytest
from kube import Cluster, eventually
from operatorpod import operator_container

from kubetune.trainer.checkpoints import complete_checkpoints, step_of

ROOT = Path(__file__).resolve().parents[2]
TRAINER, OPERATOR = engine.TRAINER_IMAGE, engine.OPERATOR_IMAGE
needs_trainer = pytest.mark.skipif(engine.unavailable(TRAINER) is not None, reason=str(engine.unavailable(TRAINER)))
needs_operator = pytest.mark.skipif(engine.unavailable(OPERATOR) is not None, reason=str(engine.unavailable(OPERATOR)))
# Small and quick: the builtin SmolLM2-135M, rank-4 LoRA, short sequences.
QUICK = {"KUBETUNE_LORA__R": "4", "KUBETUNE_DATA__MAX_LENGTH": "64", "KUBETUNE_TRAINING__BATCH_SIZE": "2"}


def inspect(tag: str) -> dict[str, Any]:
    exe = engine.engine()
    assert exe
    out = subprocess.run([exe, "image", "inspect", tag], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]


def history(tag: str) -> str:
    exe = engine.engine()
    assert exe
    fmt = "{{.CreatedBy}}"
    return subprocess.run(
        [exe, "history", "--no-trunc", "--format", fmt, tag], capture_output=True, text=True, check=True
    ).stdout


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        engine.run_argv("--rm", "--pull", "never", *args), capture_output=True, text=True, timeout=timeout
    )


def readme_run(model: Path, data: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """README's `docker run`: the three mounts, the image's own user, a read-only root, no network."""
    argv = [
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--network",
        "none",
        "-v",
        f"{model}:/model:ro",
        "-v",
        f"{data}:/data:ro",
        "-v",
        f"{out}:/output",
    ]
    for key, value in {**precision_modes.forced_env(), **(env or {})}.items():
        argv += ["-e", f"{key}={value}"]
    return [*argv, TRAINER, *args]


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return engine.exported_model(tmp_path_factory.getbasetemp())


@pytest.fixture
def mounts(tmp_path: Path) -> tuple[Path, Path]:
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    out.chmod(0o777)  # README: the output directory must be writable by UID 10001
    dates = ROOT / "examples" / "data" / "dates"
    (data / "train.jsonl").write_text("".join((dates / "train.jsonl").read_text().splitlines(keepends=True)[:32]))
    (data / "test.jsonl").write_text("".join((dates / "test.jsonl").read_text().splitlines(keepends=True)[:4]))
    return data, out


# --- the trainer image ----------------------------------------------------------------------------------


@needs_trainer
def test_trainer_image_config_is_what_readme_says():
    config = inspect(TRAINER)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/local/bin/kubetune-entrypoint"] and config["Cmd"] == ["train"]
    assert config["WorkingDir"] == "/output"
    env = dict(x.split("=", 1) for x in config["Env"])
    assert env["KUBETUNE_CONTAINER"] == "1" and env["HF_HOME"].startswith("/tmp/")
    labels = config["Labels"]
    assert labels["dev.kubetune.backend"] == "cpu" and labels["org.opencontainers.image.version"] == "0.1.0"


def layers(tag: str) -> list[tuple[int, str]]:
    """(size in bytes, instruction) of every layer that adds files, oldest first."""
    exe = engine.engine()
    assert exe
    out = subprocess.run([exe, "history", "--format", "json", tag], capture_output=True, text=True, check=True).stdout
    return [(x["size"], x["CreatedBy"]) for x in reversed(json.loads(out)) if x["size"] > 0]


@needs_trainer
def test_our_code_ships_as_a_small_layer_above_the_dependencies():
    """A code change rebuilds, pushes and pulls a layer of a few hundred KB, not the 1.7 GB venv under it."""
    sizes = [size for size, _ in layers(TRAINER)]
    venv = sizes.index(max(sizes))
    assert max(sizes) > 500e6, sizes  # torch and the rest: one layer that only a dependency change rebuilds
    code = sizes[venv + 1]  # the next layer that adds files: kubetune itself
    assert 20e3 < code < 5e6, sizes
    proc = run("--entrypoint", "python", TRAINER, "-c", "import kubetune.trainer.cli, kubetune.api.contract")
    assert proc.returncode == 0, proc.stderr


@needs_trainer
@pytest.mark.parametrize("tag", [TRAINER, OPERATOR])
def test_no_build_state_in_the_image(tag):
    """The build's CA bundle, wheel directory, pip config and proxies stay out of the published image."""
    if engine.unavailable(tag):
        pytest.skip(str(engine.unavailable(tag)))
    config = inspect(tag)["Config"]
    baked = " ".join([*config.get("Env", []), *map(str, (config.get("Labels") or {}).values()), history(tag)])
    for leak in ("build-ca", "/run/wheels", "pip-build.conf", "/opt/wheels", "ca-certificates.crt", "PROXY="):
        assert leak not in baked, leak
    probe = "import importlib.util as u, os; print([m for m in ('pip', 'trl', 'intel_extension_for_pytorch') \
if u.find_spec(m)], os.path.exists('/etc/pip-build.conf'), os.getuid())"
    proc = run("--entrypoint", "python", tag, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False", "10001"]


@needs_trainer
@pytest.mark.slow
def test_readme_flow_export_train_merge_generate(exported, mounts):
    data, out = mounts
    assert oct(exported.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
    train = run(*readme_run(exported, data, out, env={**QUICK, "KUBETUNE_TRAINING__MAX_STEPS": "3"}))
    assert train.returncode == 0, train.stderr[-3000:]
    assert [json.loads(x)["step"] for x in train.stdout.splitlines()][-1] == 3
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "run.json").read_text())["config"]["model"]["path"] == "/model"
    merge = run(*readme_run(exported, data, out, "merge", "--output-dir", "/output"))
    assert merge.returncode == 0, merge.stderr[-3000:]
    assert (out / "merged" / "config.json").is_file()
    generate = run(
        *readme_run(
            exported,
            data,
            out,
            "generate",
            "--output-dir",
            "/output",
            "--data",
            "/data/test.jsonl",
            "--max-new-tokens",
            "16",
            "--show",
            "2",
        )
    )
    assert generate.returncode == 0, generate.stderr[-3000:]
    assert (out / "eval.json").is_file()


@needs_trainer
@pytest.mark.slow
def test_stop_checkpoints_exits_75_and_the_next_run_resumes(exported, mounts):
    data, out = mounts
    exe = engine.engine()
    assert exe
    name = f"kubetune-test-stop-{os.getpid()}"
    env = {
        **QUICK,
        "KUBETUNE_TRAINING__MAX_STEPS": "400",
        "KUBETUNE_TRAINING__SAVE_STEPS": "1000",
        "KUBETUNE_TRAINING__LOGGING_STEPS": "1",
        "KUBETUNE_PROGRESS": "json",
    }
    argv = engine.run_argv("--rm", "--pull", "never", "--name", name, *readme_run(exported, data, out, env=env))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first two steps, then stop it as Kubernetes would
            if line.startswith('{"event": "progress"') and json.loads(line)["step"] >= 2:
                break
        subprocess.run([exe, "stop", "--time", "120", name], check=True, capture_output=True)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 75, proc.stderr.read()[-3000:] if proc.stderr else code
    checkpoints = complete_checkpoints(out / "checkpoints")  # with the COMPLETE marker: loadable
    assert checkpoints, sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    stopped_at = step_of(checkpoints[-1])
    assert stopped_at is not None and stopped_at >= 2
    resume = run(*readme_run(exported, data, out, env={**env, "KUBETUNE_TRAINING__MAX_STEPS": str(stopped_at + 2)}))
    assert resume.returncode == 0, resume.stderr[-3000:]
    steps = [json.loads(x)["step"] for x in resume.stdout.splitlines() if x.startswith('{"event": "progress"')]
    assert steps and steps[0] == stopped_at + 1, steps
    assert json.loads((out / "run.json").read_text())["resumed_from"]


@needs_trainer
@pytest.mark.parametrize("mount", ["model", "data", "output"])
def test_an_unusable_mount_is_named(exported, mounts, tmp_path, mount):
    """A mount the image's user cannot read (write, for /output) fails with its name, not a silent default."""
    data, out = mounts
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "config.json").write_text("{}")
    locked.chmod(0o700 if mount != "output" else 0o755)  # root's own: UID 10001 cannot list (write) it
    paths = {"model": exported, "data": data, "output": out} | {mount: locked}
    proc = run(*readme_run(paths["model"], paths["data"], paths["output"], env=QUICK), timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    need = "writable" if mount == "output" else "readable"
    assert re.search(rf"/{mount}: mounted but not {need} by UID 10001", proc.stderr), proc.stderr[-3000:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the operator image ---------------------------------------------------------------------------------


@needs_operator
def test_operator_image_has_no_torch_and_runs_as_10001():
    config = inspect(OPERATOR)["Config"]
    assert config["User"] == "10001:10001" and config["Entrypoint"] == ["kubetune-operator"]
    probe = "import importlib.util as u, os, kubetune.operator.handlers; print(u.find_spec('torch'), os.getuid())"
    proc = run("--read-only", "--entrypoint", "python", OPERATOR, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "10001"]


@needs_operator
async def test_operator_container_serves_health_and_metrics(cluster: Cluster):
    """Started as the chart starts it, against the emulated API server: it comes up, probes and counts."""
    async with operator_container(Path(os.environ["KUBECONFIG"])) as pod:

        async def answers() -> bool:
            if pod.proc.returncode is not None:
                raise AssertionError(f"the operator container exited {pod.proc.returncode}:\n{pod.log[-3000:]}")
            try:
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(pod.health_url) as health,
                    http.get(pod.metrics_url) as metrics,
                ):
                    return health.status == 200 and "kubetune_reconcile_seconds" in await metrics.text()
            except aiohttp.ClientError:
                return False

        await eventually(answers, timeout=120, what="the operator's /healthz and /metrics")
