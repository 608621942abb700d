"""The built cpu and operator images, run the way README says. Skipped, with the reason, where no engine
works or the images are not built (`make images BACKEND='cpu operator'`; .ci/run builds them first).

The trainer image: README's flow (`kubetune model export`, then train, merge and generate in the image
with the mounts, UID 10001, a read-only root and no network); `<engine> stop` during training gives exit
75 and a complete checkpoint that the next run resumes from; unusable mounts are named. The operator
image: no torch, UID 10001, and its health and metrics endpoints served against an API server. The cuda
image (opt-in, KTEST_CUDA_IMAGE=1: GBs of CUDA wheels): built on the Debian base by `make images`, CUDA torch
and bitsandbytes' CUDA kernels by import, every native library left by the trim loads, and README's run minus
`--gpus`: the CPU with `device: auto` and one no-GPU line, exit 2 in one line with `device: cuda`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


def readme_run(
    model: Path, data: Path, out: Path, *args: str, env: dict[str, str] | None = None, image: str = TRAINER
) -> list[str]:
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
    return [*argv, image, *args]


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
def test_export_runs_in_the_image_and_its_gguf_holds_the_model(tmp_path, builtin_path):
    """`kubetune export` in the image: its llama.cpp (the export extra, with the libgomp it links) checks each
    file, as a read-only container with no network; the host then reads the GGUF back with the gguf package."""
    import gguf
    import numpy as np
    from tinymodel import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny", builtin_path)
    for f in model.iterdir():
        f.chmod(0o644)  # transformers writes the weights 0600: the image's user 10001 reads them
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    args = ["--read-only", "--tmpfs", "/tmp", "--network", "none", "-v", f"{model}:/model:ro", "-v", f"{out}:/output"]
    proc = run(*args, TRAINER, "export", "--output-dir", "/output", "--merged", "/model", "-t", "f16", "-t", "q8_0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "gguf" / "export.json").read_text())["files"]
    assert [report[k]["verified"] for k in ("f16", "q8_0")] == [True, True], report
    assert (out / "gguf" / "model-q8_0.Modelfile").is_file()
    from safetensors.numpy import load_file

    embedding = load_file(model / "model.safetensors")["model.embed_tokens.weight"]
    stored = {t.name: t for t in gguf.GGUFReader(out / "gguf" / "model-f16.gguf").tensors}["token_embd.weight"]
    got = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(embedding.shape)
    assert np.abs(got - embedding).max() <= np.abs(embedding).max() * 2**-10  # f16 rounding, nothing more
    # What export adds to the runtime stage is libgomp1 (~1 MB), not apt's package caches (78 MB at first).
    (apt,) = [size for size, step in layers(TRAINER) if "libgomp1" in step]
    assert apt < 5e6, apt


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


# --- the cuda image (opt-in: GBs of CUDA wheels from PyPI) -----------------------------------------------

CUDA = "kubetune/trainer:cuda-0.1.0"
CUDA_SWITCH = "KTEST_CUDA_IMAGE"
# The air-gapped stand-in for nvidia/cuda: the Python base from `make base-image`.
CUDA_BASE = "localhost/debian-python:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def cuda_unavailable() -> str | None:
    if os.environ.get(CUDA_SWITCH) != "1":
        return (
            f"the cuda image is opt-in ({CUDA_SWITCH}=1): it pulls GBs of CUDA wheels and takes many minutes to build"
        )
    return engine.unavailable()


def host_wheel_dir() -> str:
    """The wheel directory pip uses here (torch's CPU wheel), as .ci/run passes it: the cuda build must ignore it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    )
    return proc.stdout.strip() if proc.returncode == 0 and Path(proc.stdout.strip()).is_dir() else ""


@pytest.fixture(scope="module")
def cuda_image() -> str:
    """`make images BACKEND=cuda` on the Debian base, with the CA bundle and the CPU wheel directory passed."""
    if reason := cuda_unavailable():
        pytest.skip(reason)
    exe = engine.engine()
    assert exe
    argv = ["make", "images", "BACKEND=cuda", f"ENGINE={exe}", f"CUDA_IMAGE={CUDA_BASE}", f"BASE_IMAGE={CUDA_BASE}"]
    if engine.image_id(CUDA_BASE) is None:
        argv.insert(1, "base-image")
    if HOST_CA.is_file():
        argv.append(f"BUILD_CA={HOST_CA}")
    if wheels := host_wheel_dir():
        argv.append(f"WHEELS={wheels}")
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return CUDA


def test_cuda_image_is_opt_in_with_the_reason(monkeypatch):
    monkeypatch.delenv(CUDA_SWITCH, raising=False)
    assert CUDA_SWITCH in str(cuda_unavailable())


@pytest.mark.slow
def test_cuda_image_config_for_the_nvidia_toolkit(cuda_image):
    """What the NVIDIA container toolkit reads is in the image itself, whichever base it was built on."""
    config = inspect(cuda_image)["Config"]
    assert config["User"] == "10001:10001" and config["WorkingDir"] == "/output"
    assert config["Entrypoint"] == ["/usr/local/bin/kubetune-entrypoint"] and config["Cmd"] == ["train"]
    env = dict(x.split("=", 1) for x in config["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["KUBETUNE_CONTAINER"] == "1" and env["HF_HOME"].startswith("/tmp/")
    assert config["Labels"]["dev.kubetune.backend"] == "cuda"
    baked = " ".join([*config["Env"], *map(str, config["Labels"].values()), history(cuda_image)])
    for leak in ("build-ca", "/run/wheels", "pip-build.conf", "/opt/wheels", "ca-certificates.crt", "PROXY="):
        assert leak not in baked, leak


# Run in the image: torch's build, what it sees, and bitsandbytes imported the way it is on a GPU machine (torch
# asked for the devices answers as one with a compute-capability 8.0 GPU would), so that the import loads the
# CUDA kernels for this torch and registers its CUDA backend. Printed as JSON for the test to judge.
CUDA_PROBE = """
import importlib.util, json, os, torch
out = {"uid": os.getuid(), "cuda_built": torch.backends.cuda.is_built(), "cuda": torch.version.cuda,
       "gpu_seen": torch.cuda.is_available(), "pip": importlib.util.find_spec("pip") is not None}
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.get_device_capability = lambda device=None: (8, 0)
import bitsandbytes
from bitsandbytes import cextension
lib = cextension.lib
out["bnb_backend"], out["bnb_library"] = cextension.BNB_BACKEND, type(lib).__name__
out["bnb_cuda_ops"] = hasattr(bitsandbytes, "cuda_ops")
out["bnb_file"] = os.path.basename(getattr(getattr(lib, "_lib", None), "_name", "") or "")
nf4 = ("cquantize_blockwise_bf16_nf4", "cdequantize_blockwise_bf16_nf4", "cgemm_4bit_inference_naive_bf16")
out["nf4_kernels"] = all(hasattr(getattr(lib, "_lib", None), k) for k in nf4)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_cuda_image_has_cuda_torch_and_bitsandbytes_cuda_kernels(cuda_image):
    proc = run("--read-only", "--network", "none", "--entrypoint", "python", cuda_image, "-c", CUDA_PROBE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["uid"] == 10001 and got["pip"] is False
    assert got["cuda_built"] and got["cuda"].startswith("13."), got  # PyPI's CUDA build, not the local +cpu wheel
    assert got["gpu_seen"] is False  # no GPU here
    assert (got["bnb_backend"], got["bnb_library"], got["bnb_cuda_ops"]) == ("CUDA", "CudaBNBNativeLibrary", True)
    assert got["bnb_file"].startswith("libbitsandbytes_cuda13") and got["nf4_kernels"], got


# Every native library the trimmed image still carries, loaded after torch (as a GPU job would load them).
LOAD_PROBE = """
import ctypes, glob, json, os, sysconfig, torch
sp = sysconfig.get_paths()["purelib"]
globs = ("torch/lib/*.so*", "nvidia/**/*.so*", "bitsandbytes/*.so")
paths = sorted({p for g in globs for p in glob.glob(os.path.join(sp, g), recursive=True)})
failed = {}
for path in paths:
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        failed[os.path.relpath(path, sp)] = str(exc)
print(json.dumps({"loaded": len(paths) - len(failed), "failed": failed}))
"""
# What a library may lack here: the driver (the NVIDIA toolkit mounts it with a GPU) and the libraries of
# optional interconnects (InfiniBand, MPI, UCX, libfabric) that only their plugins use.
MAY_BE_MISSING = re.compile(
    r"(libcuda|libmlx5|librdmacm|libibverbs|libmpi|libpmix|liboshmem|libfabric|libucs|libucp)\.so[.\d]*: cannot open"
)


@pytest.mark.slow
def test_cuda_image_trimmed_libraries_leave_every_other_loadable(cuda_image):
    """The trim removed only what nothing loads: every library left loads, unless it needs the driver or
    an interconnect's own library. torch's CUDA linear algebra (cuSOLVER) and bitsandbytes' kernels included."""
    proc = run("--read-only", "--network", "none", "--entrypoint", "python", cuda_image, "-c", LOAD_PROBE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    unexpected = {lib: why for lib, why in got["failed"].items() if not MAY_BE_MISSING.match(why)}
    assert not unexpected, unexpected
    for needed in ("torch/lib/libtorch_cuda_linalg.so", "torch/lib/libtorch_nvshmem.so"):
        assert needed not in got["failed"]
    assert got["loaded"] > 40, got


def placement_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if "device=" in x and "precision=" in x]


@pytest.mark.slow
def test_cuda_image_without_a_gpu_trains_on_the_cpu_and_says_so(cuda_image, exported, mounts):
    """README's `docker run` minus `--gpus`, `training.device: auto`: one line says there is no GPU, then CPU."""
    data, out = mounts
    env = {**QUICK, "KUBETUNE_TRAINING__MAX_STEPS": "2"}
    proc = run(*readme_run(exported, data, out, env=env, image=cuda_image))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    no_gpu = [x for x in proc.stderr.splitlines() if "GPU" in x]
    assert len(no_gpu) == 1 and "no GPU: torch is built for CUDA 13." in no_gpu[0], proc.stderr[-3000:]
    assert "device=cpu" in placement_lines(proc.stderr)[0]
    # Nothing else but kubetune's own lines: no library warning (torch's about the triton the trim removed).
    foreign = [x for x in proc.stderr.splitlines() if x and " kubetune." not in x and not x.startswith("done:")]
    assert not foreign, foreign
    assert [json.loads(x)["step"] for x in proc.stdout.splitlines()][-1] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_cuda_image_without_a_gpu_and_device_cuda_exits_2_in_one_line(cuda_image, exported, mounts):
    data, out = mounts
    env = {**QUICK, "KUBETUNE_TRAINING__DEVICE": "cuda"}
    proc = run(*readme_run(exported, data, out, env=env, image=cuda_image))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x]  # one line: the error, nothing before it
    expected = (
        r"error: training\.device: cuda requested but torch sees no CUDA device \(torch is built for CUDA 13\.\d+: .+\)"
    )
    assert len(errors) == 1 and re.fullmatch(expected, errors[0]), proc.stderr[-3000:]
    assert not (out / "adapter").exists() and not (out / "run.json").exists()
