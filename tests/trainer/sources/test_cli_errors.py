"""`kubetune train` with a remote source that fails: one line, the documented exit code, nothing trained."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kubetune.api.contract import ExitCode, FetchedEvent, parse_event
from kubetune.trainer.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_log_handlers(monkeypatch):
    """The CLI binds logging (and progress's default stream) to the first CliRunner's streams: avoid both."""
    monkeypatch.setattr("kubetune.trainer.cli._setup_logging", lambda: None)
    monkeypatch.setenv("KUBETUNE_PROGRESS", "json")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n')
    return str(path)


def train(tmp_path, model: str, data: str):
    return runner.invoke(app, ["train", "--model", model, "--data", data, "--output-dir", str(tmp_path / "out")])


def errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_missing_bucket(s3, tmp_path, data):
    result = train(tmp_path, "s3://no-such-bucket-here/models/x", data)
    assert result.exit_code == ExitCode.SOURCE_MISSING, result.output
    assert errors(result) == ["error: s3://no-such-bucket-here/models/x: no such bucket"]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_gated_repo_without_a_token(hub, tmp_path, data):
    hub.add("org/gated", {"config.json": b"{}"}, gated=True)
    result = train(tmp_path, "hf://org/gated", data)
    assert result.exit_code == ExitCode.SOURCE_DENIED, result.output
    assert len(errors(result)) == 1 and "gated or private: set HF_TOKEN" in errors(result)[0]


def test_remote_data_that_is_missing(hub, tmp_path):
    result = train(tmp_path, "builtin:smollm2-135m-instruct", "hf://org/no-such-dataset")
    assert result.exit_code == ExitCode.SOURCE_MISSING, result.output
    expected = f"error: hf://org/no-such-dataset: no such repository at {hub.url} (or private: set HF_TOKEN)"
    assert errors(result) == [expected]


def test_a_bad_url_is_a_config_error_naming_the_flag(tmp_path, data):
    result = train(tmp_path, "s3://Not_A_Bucket/x", data)
    assert result.exit_code == ExitCode.CONFIG, result.output
    assert errors(result)[0].startswith("error: --model: model.path: s3://Not_A_Bucket/x:")


def test_an_unreachable_store_is_retryable(tmp_path, data, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    result = train(tmp_path, "s3://models/x", data)
    assert result.exit_code == ExitCode.TRANSFER, result.output
    assert errors(result)[0].startswith("error: s3://models/x: cannot talk to http://127.0.0.1:9")


def test_fetch_fills_the_cache_and_a_later_train_reuses_it(hub, tmp_path, monkeypatch):
    """`kubetune fetch` is what a FinetuneJob's initializer runs; it reports each source and its local path."""
    repo = hub.add("org/dates", {"train.jsonl": b'{"prompt": "p", "completion": "c"}\n'}, repo_type="dataset")
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    result = runner.invoke(app, ["fetch", "--data", "hf://org/dates"])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("fetched ")]
    assert line.startswith("fetched hf://org/dates -> ") and repo.refs["main"] in line
    assert parse_event(log.read_text()) == FetchedEvent(sources=["hf://org/dates"])
    served = len(hub.gets("train.jsonl"))
    assert runner.invoke(app, ["fetch", "--data", "hf://org/dates"]).exit_code == 0
    assert len(hub.gets("train.jsonl")) == served == 1


def test_fetch_failure_is_the_same_one_line(hub):
    result = runner.invoke(app, ["fetch", "--model", "hf://org/absent"])
    assert result.exit_code == ExitCode.SOURCE_MISSING
    assert [x for x in result.output.splitlines() if x.startswith("error:")] == [
        f"error: hf://org/absent: no such repository at {hub.url} (or private: set HF_TOKEN)"
    ]
