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


PROBE = (
    "import sys; from pathlib import Path; from kubetune.trainer.outlock import hold\n"
    "from kubetune.trainer.errors import OutputBusy\n"
    "try:\n    with hold(Path(sys.argv[1])):\n        print('free')\nexcept OutputBusy:\n    print('busy')\n"
)


def another_process_finds(out: Path) -> str:
    """'busy' or 'free': what a second kubetune process sees when it tries to take `out`'s lock now."""
    return subprocess.run([sys.executable, "-c", PROBE, str(out)], capture_output=True, text=True, check=True).stdout


def test_the_lock_is_released_and_its_file_removed(tmp_path):
    out = tmp_path / "out"
    with hold(out):
        assert another_process_finds(out).strip() == "busy"
    assert list(out.iterdir()) == []
    assert another_process_finds(out).strip() == "free"


def test_a_nested_hold_keeps_the_lock_until_the_outer_one_ends(tmp_path):
    """merge, export and the push nest their holds under the CLI's: the inner end must not release the lock."""
    out = tmp_path / "out"
    with hold(out, "merge"):
        with hold(out, "export"):
            pass
        assert another_process_finds(out).strip() == "busy"
    assert another_process_finds(out).strip() == "free"


def _spy_push(monkeypatch, seen: list[str]) -> None:
    """push.push, replaced by a probe: what another process finds at the moment the upload would run."""
    from kubetune.trainer import push

    def probe(out: Path, target: str) -> dict:
        seen.append(another_process_finds(out).strip())
        return {"target": target, "files": 0}

    monkeypatch.setattr(push, "push", probe)


@pytest.mark.slow
def test_train_and_merge_hold_the_lock_through_the_push(monkeypatch, tmp_path, builtin_path):
    """Another run on the directory during the upload would swap the adapter under it (issue 22 item 5)."""
    from tinymodel import save_tiny_llama
    from typer.testing import CliRunner

    from kubetune.trainer.cli import app
    from kubetune.trainer.train import run

    seen: list[str] = []
    _spy_push(monkeypatch, seen)
    out, data = tmp_path / "out", tmp_path / "train.jsonl"
    data.write_text("".join((DATES / "train.jsonl").read_text().splitlines(keepends=True)[:4]))
    base = save_tiny_llama(tmp_path / "base", builtin_path)
    sets = [f"model.path={base}", f"data.path={data}", f"output_dir={out}", "training.max_steps=1"]
    run(load_config(None, sets=[*sets, "output.push_to=s3://bucket/run"]), progress="none")
    assert seen == ["busy"]
    result = CliRunner().invoke(app, ["merge", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert seen == ["busy", "busy"]
    assert another_process_finds(out).strip() == "free" and not (out / LOCK_FILE).exists()


def test_a_planted_link_as_the_lock_file_is_refused_and_its_target_untouched(tmp_path):
    from kubetune.trainer.errors import UsageError

    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.write_text("someone else's file")
    (out / LOCK_FILE).symlink_to(victim)
    with pytest.raises(UsageError, match=f"output_dir: {out / LOCK_FILE} is a symbolic link"), hold(out):
        pass
    assert victim.read_text() == "someone else's file" and (out / LOCK_FILE).is_symlink()
