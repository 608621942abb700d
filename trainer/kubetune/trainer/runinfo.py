"""Read back what a training run recorded, so merge and generate need no repeated flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import ModelError


def _json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one ModelError line naming the file (and line) when it is not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: unreadable {what}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: unreadable {what}: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: unreadable {what}: expected a JSON object, got {type(value).__name__}")
    return value


def load_run(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "run.json"
    return _json_object(path, "run.json") if path.exists() else {}


def adapter_dir(output_dir: Path, adapter: Path | None) -> Path:
    path = adapter or output_dir / "adapter"
    if not (path / "adapter_config.json").exists():
        raise ModelError(f"{path}: no LoRA adapter here (adapter_config.json missing); train first")
    _json_object(path / "adapter_config.json", "adapter config")
    return path


def base_model(run: dict[str, Any], adapter: Path, base: str | None) -> str:
    """--base, else the model the run trained on, else what the adapter config names."""
    if base:
        return base
    model = run.get("config", {}).get("model", {}) if isinstance(run.get("config"), dict) else {}
    if isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"]:
        return model["path"]
    cfg = _json_object(adapter / "adapter_config.json", "adapter config")
    if isinstance(cfg.get("base_model_name_or_path"), str) and cfg["base_model_name_or_path"]:
        return cfg["base_model_name_or_path"]
    raise ModelError(f"{adapter}: cannot tell the base model; pass --base")
