"""kubetune's shared schema (pure pydantic, no torch, no Kubernetes client)."""

from kubetune.api.config import BUILTIN_MODEL, TrainConfig
from kubetune.api.sources import ConfigError, load_config, to_yaml

__all__ = ["BUILTIN_MODEL", "ConfigError", "TrainConfig", "load_config", "to_yaml"]
