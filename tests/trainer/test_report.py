"""run.json helpers: atomic writes, hashes, plots."""

import json

import pytest

from kubetune.trainer.report import hash_paths, model_fingerprint, plot_loss, versions, write_json_atomic


def test_atomic_json_never_leaves_temp_files(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"a": 1})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "run.json", {("tuple", "key"): 1})  # not JSON-serializable
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}  # old content kept
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_hashes_change_with_content(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("a\n")
    h1 = hash_paths([str(f)])[str(f)]
    f.write_text("b\n")
    assert hash_paths([str(f)])[str(f)] != h1
    d = tmp_path / "model"
    d.mkdir()
    (d / "w.bin").write_bytes(b"x" * 10)
    fp = model_fingerprint(str(d))
    (d / "w.bin").write_bytes(b"y" * 10)
    assert model_fingerprint(str(d)) != fp
    assert model_fingerprint("org/name").startswith("hub:")


def test_versions_lists_core_packages():
    v = versions()
    assert v["torch"] and v["transformers"] and v["peft"]


def test_plot(tmp_path):
    metrics = [
        {"event": "progress", "step": 1, "loss": 2.0},
        {"event": "progress", "step": 2, "loss": 1.0},
        {"event": "eval", "step": 2, "eval_loss": 1.2},
    ]
    assert plot_loss(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_loss([], tmp_path / "none.png")


def test_summary_line_when_no_loss_was_logged():
    # A run whose logged losses were all NaN has none to report: the line says so instead of crashing.
    from kubetune.trainer.report import summary_line

    line = summary_line(
        {"steps": 3, "first_loss": None, "final_loss": None, "tokens_per_second": None, "adapter_path": "o/adapter"}
    )
    assert line == "done: 3 steps, loss n/a -> n/a, speed n/a; adapter in o/adapter"
    full = summary_line(
        {"steps": 2, "first_loss": 1.5, "final_loss": 0.25, "tokens_per_second": 99.6, "adapter_path": "a"}
    )
    assert full == "done: 2 steps, loss 1.5000 -> 0.2500, 100 tokens/s; adapter in a"


def test_divergence_guard_stops_at_the_first_non_finite_loss_without_saving():
    from transformers import TrainerControl, TrainerState

    from kubetune.api.contract import ExitCode
    from kubetune.trainer.divergence import DivergenceGuard
    from kubetune.trainer.errors import Diverged

    guard, state = DivergenceGuard(), TrainerState()
    for step, loss in [(1, 2.0), (2, 1.5)]:
        state.global_step = step
        control = guard.on_log(None, state, TrainerControl(should_save=True), logs={"loss": loss})
        assert not control.should_training_stop and control.should_save
    guard.raise_if_diverged(1e-3)  # nothing to report yet
    state.global_step = 3
    control = guard.on_log(None, state, TrainerControl(should_save=True), logs={"loss": float("nan")})
    assert control.should_training_stop and not control.should_save and not control.should_evaluate
    with pytest.raises(Diverged, match=r"loss is nan at step 3; .* training.lr \(now 0.001\)") as info:
        guard.raise_if_diverged(1e-3)
    assert info.value.exit_code == ExitCode.DIVERGED
