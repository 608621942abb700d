"""The trainer/operator contract: events round-trip, readers tolerate noise and newer fields."""

from __future__ import annotations

import json

from kubetune.api import contract
from kubetune.api.contract import ErrorEvent, ExitCode, ProgressEvent, SummaryEvent, parse_event


def test_progress_round_trips_and_writes_nan_as_null():
    event = ProgressEvent(step=3, total_steps=10, loss=float("nan"), epoch=0.3, tokens_per_second=12.5)
    line = event.line()
    assert json.loads(line)["loss"] is None  # JSON has no NaN; a reader must still parse the line
    assert parse_event(line) == event


def test_readers_ignore_unknown_fields_and_non_events():
    newer = json.dumps({"event": "progress", "step": 1, "total_steps": 2, "from_the_future": True})
    assert parse_event(newer) == ProgressEvent(step=1, total_steps=2)
    for noise in (None, "", "Loading weights...", "[1, 2]", '{"event": "bogus"}', '{"event": "progress"}'):
        assert parse_event(noise) is None, noise


def test_summary_and_error_are_told_apart_by_event():
    summary = SummaryEvent(adapter_path="/output/adapter", steps=4, final_loss=0.5)
    error = ErrorEvent(exit_code=ExitCode.DATA, message="/data/bad.jsonl:6: missing field 'completion'")
    assert isinstance(parse_event(summary.line()), SummaryEvent)
    parsed = parse_event(error.line())
    assert isinstance(parsed, ErrorEvent) and parsed.exit_code == 3 and "bad.jsonl:6" in parsed.message


def test_exit_codes_are_distinct_and_preempted_is_not_permanent():
    values = [code.value for code in ExitCode]
    assert len(values) == len(set(values))
    assert ExitCode.PREEMPTED not in contract.PERMANENT_EXIT_CODES
    assert ExitCode.UNEXPECTED not in contract.PERMANENT_EXIT_CODES  # an environment failure may pass on retry


def test_process_env_names_are_all_kubetune_prefixed():
    assert all(name.startswith(contract.ENV_PREFIX) for name in contract.PROCESS_ENV)
