"""One kubetune process per output directory (issue 22 item 5): a second one fails fast, touching nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api import load_config
from kubetune.api.contract import PERMANENT_EXIT_CODES, ExitCode
from kubetune.trainer.errors import OutputBusy
from kubetune.trainer.outlock import LOCK_FILE, hold

HOLDER = (
    "import sys; from pathlib import Path; from kubetune.trainer.outlock import hold\n"
    "with hold(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n"
)
DATES = Path(__file__).resolve().parents[2] / "examples" / "data" / "dates"


@pytest.fixture
def other_process(tmp_path):
    """Another process holding OUTPUT_DIR's lock, as a concurrent run would; released when its stdin closes."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"  # blocks until the lock is held (or the child died)
    yield out, proc
    if proc.poll() is None:
        proc.stdin.close()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_second_run_on_a_held_output_dir_fails_fast_and_deletes_nothing(other_process, tmp_path, builtin_path):
    from tinymodel import save_tiny_llama

    from kubetune.trainer.train import run

    out, _ = other_process
    staging = out / "checkpoints" / ".incomplete" / "checkpoint-3"
    staging.mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(b"the other run's half-written checkpoint")
    (out / "checkpoints" / "checkpoint-2").mkdir()
    (out / "checkpoints" / "checkpoint-2" / "COMPLETE").write_text("{}")
    data = tmp_path / "train.jsonl"
    data.write_text("".join((DATES / "train.jsonl").read_text().splitlines(keepends=True)[:4]))
    base = save_tiny_llama(tmp_path / "base", builtin_path)
    sets = [f"model.path={base}", f"data.path={data}", f"output_dir={out}", "training.max_steps=1"]
    cfg = load_config(None, sets=[*sets, "training.resume=never"])  # never: the other run's checkpoint is not ours
    with pytest.raises(OutputBusy, match=f"output_dir: {out} is in use by another kubetune process \\(pid ") as busy:
        run(cfg, progress="none")
    # Transient (a retried pod may start while the old one still terminates): a Job retries it, unlike exit 2.
    assert busy.value.exit_code == ExitCode.OUTPUT_BUSY not in PERMANENT_EXIT_CODES
    assert staging.joinpath("adapter_model.safetensors").read_bytes() == b"the other run's half-written checkpoint"
    assert (out / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file() and not (out / "adapter").exists()


def test_merge_on_a_held_output_dir_fails(other_process):
    from kubetune.trainer.merge import merge

    out, _ = other_process
    (out / "adapter").mkdir()
    (out / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(OutputBusy, match="in use by another kubetune process"):
        merge(out, base="unused")
    assert not (out / "merged").exists()


def test_a_killed_holder_releases_the_lock(other_process):
    out, proc = other_process
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with hold(out):  # the kernel dropped the dead process's lock, though its file is still there
        assert (out / LOCK_FILE).read_text().startswith(f"pid {os.getpid()} ")
    assert not (out / LOCK_FILE).exists()


def test_the_lock_is_released_and_its_file_removed(tmp_path):
    with hold(tmp_path / "out"), pytest.raises(OutputBusy), hold(tmp_path / "out"):
        pass
    with hold(tmp_path / "out"):
        pass
    assert list((tmp_path / "out").iterdir()) == []
