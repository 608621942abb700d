"""The termination message: what the operator shows as a FinetuneJob's failure or result."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kubetune.trainer.cli import app
from kubetune.trainer.termination import LIMIT, write_termination_message


def test_nothing_is_written_outside_a_pod(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "absent"))
    assert write_termination_message({"event": "summary"}) is False
    assert not (tmp_path / "absent").exists()


def test_a_long_message_is_shortened_but_stays_json(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    assert write_termination_message({"event": "error", "exit_code": 3, "message": "x" * 10_000})
    record = json.loads(log.read_text())
    assert len(log.read_text()) <= LIMIT and record["exit_code"] == 3 and record["message"].endswith("...")


def test_a_config_error_becomes_the_termination_message(tmp_path, monkeypatch):
    log = tmp_path / "termination-log"
    log.touch()
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: 0\n")
    result = CliRunner().invoke(app, ["train", "--config", str(bad)])
    assert result.exit_code == 2
    record = json.loads(log.read_text())
    assert record["event"] == "error" and record["exit_code"] == 2
    assert f"{bad}:2: lora.r" in record["message"]
