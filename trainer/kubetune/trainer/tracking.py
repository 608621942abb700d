"""training.report_to: TensorBoard, MLflow and W&B through transformers' own callbacks.

transformers' TensorBoardCallback, MLflowCallback and WandbCallback already turn
the Trainer's logs into scalars, params and metrics. What they leave to us, and
what is here:
- TensorBoard event files go to OUTPUT_DIR/tensorboard (not the checkpoint dir).
- The MLflow run / W&B run is started here, before the Trainer exists, with the run
  name and our whole config as params; the callbacks then log into that run. After
  the adapter is saved, `finish` logs it as an artifact with the final metrics and
  ends the run (the callbacks would end it before the adapter exists).
- A tracker that cannot be reached never stops training: one warning, then the run
  goes on without it. A tracker whose package is missing is a config error (exit 2)
  before anything loads: asking for MLflow and silently getting nothing is worse.
Only the main process (RANK 0) talks to trackers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.config import TrainConfig
from kubetune.trainer.errors import UsageError
from kubetune.trainer.report import scrub

log = logging.getLogger("kubetune.tracking")
PROBE_TIMEOUT = 5.0
MAX_PARAM = 250  # MLflow's historical param length limit; longer values are cut, not dropped


@dataclass
class Trackers:
    """The Trainer callbacks to add, and the runs to finish after the adapter is saved."""

    callbacks: list[Any] = field(default_factory=list)
    mlflow: Any = None  # the mlflow module, when a run is open
    wandb: Any = None  # the wandb module, when a run is open
    recorded: dict[str, Any] = field(default_factory=dict)  # run ids etc., for run.json

    def abort(self) -> None:
        """Training failed or was preempted: mark the runs so, never raise over the real error."""
        try:
            if self.mlflow is not None:
                self.mlflow.end_run(status="KILLED")
            if self.wandb is not None:
                self.wandb.finish(exit_code=1)
        except Exception as exc:
            log.warning("tracking: could not close the run (%s)", _first_line(exc))

    def finish(self, out: Path, summary: dict[str, Any]) -> dict[str, Any]:
        """Final metrics and the adapter as an artifact; end the runs. Failures warn, never raise."""
        final = {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        adapter = out / "adapter"
        if self.mlflow is not None:
            try:
                self.mlflow.log_metrics({f"summary.{k}": v for k, v in final.items()})
                if adapter.is_dir():
                    self.mlflow.log_artifacts(str(adapter), artifact_path="adapter")
                self.mlflow.end_run()
            except Exception as exc:  # a tracker is never a reason to fail a finished run
                log.warning("mlflow: could not finish the run (%s); the adapter is in %s", _first_line(exc), adapter)
        if self.wandb is not None:
            try:
                self.wandb.run.summary.update(final)
                if adapter.is_dir():
                    artifact = self.wandb.Artifact("adapter", type="model")
                    artifact.add_dir(str(adapter))
                    self.wandb.run.log_artifact(artifact)
                self.wandb.finish()
            except Exception as exc:
                log.warning("wandb: could not finish the run (%s)", _first_line(exc))
        return self.recorded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def flat_params(cfg: TrainConfig) -> dict[str, str]:
    """The config as `section.key` -> string, values cut to what every MLflow server accepts."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            out[prefix] = str(value)[:MAX_PARAM]

    walk("", scrub(cfg.model_dump(mode="json")))  # an MLflow URI with userinfo, a presigned data URL
    return out


def run_name(cfg: TrainConfig) -> str:
    return cfg.tracking.run_name or Path(cfg.output_dir).resolve().name


def _tensorboard(cfg: TrainConfig, trackers: Trackers) -> None:
    from transformers.integrations import TensorBoardCallback

    try:
        callback = TensorBoardCallback()
    except RuntimeError:
        raise UsageError(
            "training.report_to: tensorboard is not installed: pip install 'kubetune-trainer[tracking]'"
        ) from None
    callback.logging_dir = str(Path(cfg.output_dir) / "tensorboard")
    trackers.callbacks.append(callback)
    trackers.recorded["tensorboard_dir"] = callback.logging_dir


def _reachable(uri: str) -> str | None:
    """None if an http(s) tracking server answers its health check, else why not."""
    if not uri.startswith(("http://", "https://")):
        return None  # a local store (file:, sqlite:) has nothing to reach
    import requests

    try:
        response = requests.get(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT)
    except requests.RequestException as exc:
        return type(exc).__name__
    return None if response.ok else f"HTTP {response.status_code}"


def _mlflow(cfg: TrainConfig, trackers: Trackers) -> None:
    uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UsageError("training.report_to: mlflow needs tracking.mlflow_uri or MLFLOW_TRACKING_URI")
    try:
        import mlflow
        from transformers.integrations import MLflowCallback
    except ImportError:
        raise UsageError(
            "training.report_to: mlflow is not installed: pip install 'kubetune-trainer[tracking]'"
        ) from None
    problem = _reachable(uri)
    if problem:
        log.warning("mlflow: tracking server %s is unreachable (%s); training continues without it", uri, problem)
        return
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(cfg.tracking.experiment)
        run = mlflow.start_run(run_name=run_name(cfg))
        params = flat_params(cfg)
        keys = sorted(params)
        for i in range(0, len(keys), 100):  # the REST API takes at most 100 params per batch
            mlflow.log_params({k: params[k] for k in keys[i : i + 100]})
    except Exception as exc:
        log.warning("mlflow: cannot start a run at %s (%s); training continues without it", uri, _first_line(exc))
        return
    os.environ.setdefault("MLFLOW_TRACKING_URI", uri)  # MLflowCallback reads it; the run is already ours
    trackers.callbacks.append(MLflowCallback())
    trackers.mlflow = mlflow
    experiment = cfg.tracking.experiment
    shown = scrub(uri)  # run.json is pushed: the server's address, not its password
    trackers.recorded["mlflow"] = {"tracking_uri": shown, "run_id": run.info.run_id, "experiment": experiment}


def _wandb(cfg: TrainConfig, trackers: Trackers) -> None:
    try:
        import wandb
        from transformers.integrations import WandbCallback
    except ImportError:
        raise UsageError("training.report_to: wandb is not installed: pip install wandb") from None
    try:
        config = scrub(cfg.model_dump(mode="json"))
        run = wandb.init(project=cfg.tracking.experiment, name=run_name(cfg), config=config)
    except Exception as exc:
        log.warning("wandb: cannot start a run (%s); training continues without it", _first_line(exc))
        return
    trackers.callbacks.append(WandbCallback())
    trackers.wandb = wandb
    trackers.recorded["wandb"] = {"run_id": run.id, "project": cfg.tracking.experiment}


BUILDERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb}


def start(cfg: TrainConfig) -> Trackers:
    """Open the runs report_to asks for (main process only); unreachable trackers are warned about and skipped."""
    trackers = Trackers()
    if os.environ.get("RANK", "0") != "0":
        return trackers
    for name in dict.fromkeys(cfg.training.report_to):
        BUILDERS[name](cfg, trackers)
    return trackers
