"""Progress as the operator and people read it.

One JSON line per logging step on stdout (the contract in kubetune.api.contract), also
appended to `metrics.jsonl`; an interactive terminal gets a tqdm bar instead
of JSON lines unless asked. Only the main process reports.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from kubetune.api.contract import EvalEvent, ProgressEvent


def progress_mode(requested: str | None, stream: TextIO | None = None) -> str:
    """json | bar: `auto` means a bar on a terminal, JSON lines otherwise (pods, pipes, CI)."""
    if requested in {"json", "bar"}:
        return requested
    return "bar" if (stream or sys.stdout).isatty() else "json"  # sys.stdout now, not at import


def progress_record(
    step: int,
    total: int,
    logs: dict[str, float],
    tokens: int,
    elapsed: float,
    window_tokens: int,
    window_s: float,
    steps_done: int | None = None,
) -> dict[str, Any]:
    """The progress event: pure, so its fields are tested without training.

    `elapsed` and `steps_done` cover this session only, so a resumed run's ETA is not skewed by earlier steps.
    """
    done = step if steps_done is None else steps_done
    rate = window_tokens / window_s if window_s > 0 else 0.0
    eta = (total - step) * (elapsed / done) if done > 0 else None
    return ProgressEvent(
        step=step,
        total_steps=total,
        loss=logs.get("loss"),
        epoch=round(logs.get("epoch", 0.0), 4),
        tokens_per_second=round(rate, 1),
        eta_seconds=round(eta, 1) if eta is not None else None,
        learning_rate=logs.get("learning_rate"),
        grad_norm=logs.get("grad_norm"),
        tokens=tokens,
    ).model_dump(mode="json")


class ProgressReporter(TrainerCallback):
    def __init__(self, metrics_path: Path, print_json: bool, stream: TextIO | None = None):
        self.metrics_path = metrics_path
        self.print_json = print_json
        self.stream = stream or sys.stdout
        self.start = self.last_time = time.perf_counter()
        self.last_tokens = 0
        self.start_tokens = 0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._baseline_pending = True

    def on_step_begin(self, args, state, control, **kwargs):
        # The baseline is taken at the first step, not at train begin: the Trainer restores a resumed run's
        # state (and its token count) after on_train_begin, and setup time is not training time.
        if getattr(self, "_baseline_pending", True):
            self._baseline_pending = False
            self.start = self.last_time = time.perf_counter()
            self.last_tokens = self.start_tokens = state.num_input_tokens_seen
            self.start_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        # Always report the last step, whatever logging_steps is: watchers see step == total_steps.
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        # Evaluation time is not training time: restart the throughput window after it.
        self.last_time = time.perf_counter()
        self.last_tokens = state.num_input_tokens_seen

    def _emit(self, record: dict[str, Any]) -> None:
        line = json.dumps(record)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.print_json:
            print(line, file=self.stream, flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        if "loss" in logs:
            tokens = state.num_input_tokens_seen
            record = progress_record(
                state.global_step,
                state.max_steps,
                logs,
                tokens,
                now - self.start,
                tokens - self.last_tokens,
                now - self.last_time,
                steps_done=state.global_step - self.start_step,
            )
            self.last_time, self.last_tokens = now, tokens
            self._emit(record)
        elif "eval_loss" in logs:
            event = EvalEvent(
                step=state.global_step,
                epoch=round(logs.get("epoch", 0.0), 4),
                eval_loss=logs["eval_loss"],
                eval_exact_match=logs.get("eval_exact_match"),
            )
            self._emit(event.model_dump(mode="json", exclude_none=True))
