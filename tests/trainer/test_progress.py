"""The progress event (kubetune.api.contract) and the output mode choice."""

import io
import json

from kubetune.trainer.progress import ProgressReporter, progress_mode, progress_record


def test_record_fields_and_rates():
    r = progress_record(
        step=5,
        total=20,
        logs={"loss": 1.5, "epoch": 0.25, "learning_rate": 1e-4},
        tokens=2500,
        elapsed=10.0,
        window_tokens=1000,
        window_s=4.0,
    )
    assert r["event"] == "progress"
    assert (r["step"], r["total_steps"], r["loss"], r["epoch"]) == (5, 20, 1.5, 0.25)
    assert r["tokens_per_second"] == 250.0
    assert r["eta_seconds"] == 30.0  # 15 steps left at 2 s/step
    json.dumps(r)


def test_eta_of_a_resumed_run_counts_this_sessions_steps_only():
    # Resumed at step 8, now at step 10 after 4 s: 2 s/step, 10 steps left.
    r = progress_record(10, 20, {"loss": 1.0}, 0, elapsed=4.0, window_tokens=0, window_s=1.0, steps_done=2)
    assert r["eta_seconds"] == 20.0


def test_non_finite_values_become_null():
    r = progress_record(1, 2, {"loss": float("nan")}, 0, 1.0, 0, 0.0)
    assert r["loss"] is None and r["tokens_per_second"] == 0.0


def test_mode():
    assert progress_mode("json") == "json" and progress_mode("bar") == "bar"
    assert progress_mode("auto", io.StringIO()) == "json"  # not a terminal: pods, pipes, CI


class State:
    is_world_process_zero = True
    global_step = 3
    max_steps = 6
    num_input_tokens_seen = 300


def test_reporter_prints_and_appends(tmp_path):
    out = io.StringIO()
    rep = ProgressReporter(tmp_path / "m.jsonl", print_json=True, stream=out)
    rep.on_train_begin(None, State(), None)
    rep.on_step_begin(None, State(), None)
    assert rep.start_tokens == 300  # the baseline is the (possibly restored) count at the first step
    rep.on_log(None, State(), None, logs={"loss": 0.5, "epoch": 0.5})
    rep.on_log(None, State(), None, logs={"eval_loss": 0.4, "epoch": 0.5})
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["progress", "eval"]
    assert json.loads(out.getvalue().splitlines()[0])["loss"] == 0.5


def test_the_last_step_is_always_reported(tmp_path):
    from transformers import TrainerControl

    rep = ProgressReporter(tmp_path / "m.jsonl", print_json=False)
    state = State()
    control = rep.on_step_end(None, state, TrainerControl())
    assert control.should_log is False  # step 3 of 6: left to logging_steps
    state.global_step = 6
    assert rep.on_step_end(None, state, TrainerControl()).should_log is True
