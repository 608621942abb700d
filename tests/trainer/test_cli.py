"""CLI errors: one clear line per problem and the documented exit code, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import precision_modes
import pytest
from typer.testing import CliRunner

from kubetune.api.contract import ExitCode
from kubetune.trainer.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        keep = {"KUBETUNE_CACHE_DIR", precision_modes.ENV}  # the suite's forced precision, if any, stays
        if (k.startswith("KUBETUNE_") and k not in keep) or k in {"DATA_PATH", "OUTPUT_DIR"}:
            monkeypatch.delenv(k)


def test_config_show_resolves_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  lr: 1.0e-4\n  epochs: 2\n")
    monkeypatch.setenv("KUBETUNE_TRAINING__EPOCHS", "5")
    result = runner.invoke(app, ["config", "show", "--config", str(cfg), "--set", "lora.r=4"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.0001" in result.output and "epochs: 5.0" in result.output and "r: 4" in result.output


def test_config_from_env_var_path(tmp_path, monkeypatch):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lora:\n  r: 12\n")
    monkeypatch.setenv("KUBETUNE_CONFIG", str(cfg))
    assert "r: 12" in runner.invoke(app, ["config", "show"]).output


def test_bad_config_exits_2_naming_file_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  lr: fast\n")
    result = runner.invoke(app, ["train", "--config", str(cfg)])
    assert result.exit_code == ExitCode.CONFIG
    assert result.output.startswith(f"error: {cfg}:2: training.lr:")
    assert "Traceback" not in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["train", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == ExitCode.CONFIG and "cannot read config" in result.output


@pytest.mark.slow
def test_bad_data_exits_3_before_loading_the_model(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    result = runner.invoke(app, ["train", "--data", str(data), "--output-dir", str(tmp_path / "o")])
    assert result.exit_code == ExitCode.DATA
    assert f"error: {data}:2: missing field 'completion'" in result.output
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_model_exits_4(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "x"}) + "\n")
    result = runner.invoke(app, ["train", "--data", str(data), "--model", str(tmp_path / "no-model")])
    assert result.exit_code == ExitCode.MODEL and "no such file or directory" in result.output


def test_merge_without_adapter_exits_4(tmp_path):
    result = runner.invoke(app, ["merge", "--output-dir", str(tmp_path)])
    assert result.exit_code == ExitCode.MODEL and "no LoRA adapter" in result.output


def test_export_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    result = runner.invoke(app, ["model", "export", "builtin:smollm2-135m-instruct", str(tmp_path / "x")])
    assert result.exit_code == ExitCode.CONFIG and (tmp_path / "x" / "keep").read_text() == "mine"


def test_unknown_builtin(tmp_path):
    result = runner.invoke(app, ["model", "export", "builtin:nope", str(tmp_path / "y")])
    assert result.exit_code == ExitCode.MODEL and "unknown builtin 'nope'" in result.output


@pytest.mark.slow
def test_data_inspect(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(5)))
    result = runner.invoke(app, ["data", "inspect", "--data", str(data), "--png", str(tmp_path / "h.png")])
    assert result.exit_code == 0, result.output
    assert "records: 5" in result.output and "⟦a0<|im_end|>⟧" in result.output
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unexpected_error_prints_a_redacted_traceback_and_exits_1():
    """Exit 1 is the one path that prints a traceback: the exception's text goes through the redaction too."""
    crash = (
        "import kubetune.trainer.cli as cli\n"
        "@cli.app.command('crash')\n"
        "def crash():\n"
        "    raise RuntimeError('GET https://bob:hunter2pass@files.example/x?X-Amz-Signature=deadbeefcafe failed')\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", crash, "crash"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "RuntimeError" in proc.stderr and "files.example" in proc.stderr
    assert "hunter2pass" not in proc.stderr and "deadbeefcafe" not in proc.stderr
