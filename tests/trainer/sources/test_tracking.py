"""training.report_to wiring that needs no training run: unreachable servers, missing packages, params."""

from __future__ import annotations

import importlib.util
import logging
import sys

import pytest

from kubetune.api import load_config
from kubetune.api.contract import ExitCode
from kubetune.trainer import tracking
from kubetune.trainer.errors import UsageError


def config(tmp_path, *sets: str):
    return load_config(None, sets=[f"output_dir={tmp_path / 'out'}", *sets])


def test_a_tracking_server_that_is_down_costs_one_warning(tmp_path, caplog):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    cfg = config(tmp_path, "training.report_to=mlflow,tensorboard", "tracking.mlflow_uri=http://127.0.0.1:9")
    with caplog.at_level(logging.WARNING, logger="kubetune.tracking"):
        trackers = tracking.start(cfg)
    ours = [r for r in caplog.records if r.name.startswith("kubetune")]
    warnings = [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "http://127.0.0.1:9 is unreachable" in warnings[0]
    assert "training continues without it" in warnings[0]
    assert [type(c).__name__ for c in trackers.callbacks] == ["TensorBoardCallback"]  # the rest still works
    assert trackers.mlflow is None and "mlflow" not in trackers.recorded


def test_mlflow_without_a_uri_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UsageError, match=r"tracking\.mlflow_uri or MLFLOW_TRACKING_URI") as exc:
        tracking.start(config(tmp_path, "training.report_to=mlflow"))
    assert exc.value.exit_code == ExitCode.CONFIG


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_a_missing_tracker_package_is_a_config_error(tmp_path, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # what `import x` sees when x is not installed
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(UsageError, match=f"{package} is not installed"):
        tracking.start(config(tmp_path, f"training.report_to={package}"))


def test_tensorboard_writes_under_the_output_dir(tmp_path):
    pytest.importorskip("tensorboard")
    trackers = tracking.start(config(tmp_path, "training.report_to=tensorboard"))
    assert trackers.callbacks[0].logging_dir == str(tmp_path / "out" / "tensorboard")


def test_only_the_main_process_tracks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert tracking.start(config(tmp_path, "training.report_to=tensorboard")).callbacks == []


def test_params_are_the_flattened_config():
    params = tracking.flat_params(load_config(None, sets=["training.lr=0.001", "data.path=a.jsonl,b.jsonl"]))
    assert params["training.lr"] == "0.001" and params["data.path"] == "['a.jsonl', 'b.jsonl']"
    assert all(len(v) <= tracking.MAX_PARAM for v in params.values())


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb is not installed here")
def test_wandb_offline_run_gets_the_callback(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    trackers = tracking.start(config(tmp_path, "training.report_to=wandb", "tracking.run_name=t"))
    assert [type(c).__name__ for c in trackers.callbacks] == ["WandbCallback"]
    trackers.finish(tmp_path / "out", {"final_loss": 1.0})
