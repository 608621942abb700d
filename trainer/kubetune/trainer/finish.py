"""What happens after the adapter is saved: trackers finished, results pushed, run.json and the last words updated.

One call from train.run (and one from merge for the push), so training itself
knows nothing about remote stores or trackers. Only the main process acts (the
others get an empty summary from training).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubetune.api.config import TrainConfig
from kubetune.api.contract import MergedEvent
from kubetune.trainer import push
from kubetune.trainer.report import write_json_atomic
from kubetune.trainer.termination import write_termination_message
from kubetune.trainer.tracking import Trackers


def _update_run_json(out: Path, extra: dict[str, Any]) -> None:
    path = out / "run.json"
    if extra and path.exists():
        write_json_atomic(path, {**json.loads(path.read_text()), **extra})


def after_training(
    cfg: TrainConfig, summary: dict[str, Any], fetched: list[dict[str, Any]], trackers: Trackers
) -> dict[str, Any]:
    """Record sources and tracker runs in run.json, close the trackers, push if asked; returns the summary."""
    if not summary or os.environ.get("RANK", "0") != "0":
        return summary
    out = Path(cfg.output_dir)
    tracked = trackers.finish(out, summary)
    extra: dict[str, Any] = {}
    if fetched:
        extra["sources"] = fetched
    if tracked:
        extra["tracking"] = tracked
    _update_run_json(out, extra)
    if cfg.output.push_to:
        summary = after_output(out, cfg.output.push_to, summary)
        write_termination_message(summary)  # again, now with pushed_to: status shows where the result is
    return summary


def after_output(out: Path, target: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    """Push adapter/, merged/, run.json (after training, and again after a merge); status learns where they went."""
    if not target:
        return summary
    pushed = push.push(out, target)
    _update_run_json(out, {"pushed": pushed})  # the local copy says where; the pushed copy is the result itself
    return {**summary, "pushed_to": target}


def after_merge(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    """After `kubetune merge`: push adapter, merged model and run.json again if the run asked for output.push_to.

    The merge pod's termination message is the result either way.
    """
    from kubetune.trainer.runinfo import load_run

    target = load_run(out).get("config", {}).get("output", {}).get("push_to")
    result = after_output(out, target, result)
    write_termination_message(MergedEvent.model_validate(result).model_dump(mode="json"))
    return result
