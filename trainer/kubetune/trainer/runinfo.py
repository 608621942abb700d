"""Read back what a training run recorded, so merge and generate need no repeated flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import ModelError


def load_run(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "run.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}:{exc.lineno}: unreadable run.json: {exc.msg}") from None


def adapter_dir(output_dir: Path, adapter: Path | None) -> Path:
    path = adapter or output_dir / "adapter"
    if not (path / "adapter_config.json").exists():
        raise ModelError(f"{path}: no LoRA adapter here (adapter_config.json missing); train first")
    return path


def base_model(run: dict[str, Any], adapter: Path, base: str | None) -> str:
    """--base, else the model the run trained on, else what the adapter config names."""
    if base:
        return base
    if run.get("config", {}).get("model", {}).get("path"):
        return run["config"]["model"]["path"]
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if cfg.get("base_model_name_or_path"):
        return cfg["base_model_name_or_path"]
    raise ModelError(f"{adapter}: cannot tell the base model; pass --base")
