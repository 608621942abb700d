"""What the trainer's pods report, read with the contract's own models (kubetune.api.contract).

One parser for every termination message (workers, merge, initializer) and the progress lines of the
rank-0 log: the trainer writes these events from the same models, so a renamed field fails a test
instead of blanking a status. Pure.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from kubetune.api import contract
from kubetune.api.contract import ExitCode
from kubetune.api.finetunejob import Progress
from kubetune.operator.observed import PodView


def last_words(message: str | None) -> contract.AnyEvent | str | None:
    """A termination message: the trainer's event; plain text (FallbackToLogsOnError: the log's last line) as
    that line; None when empty or JSON that is not ours."""
    if not message or not message.strip():
        return None
    event = contract.parse_event(message)
    if event is not None:
        return event
    try:
        json.loads(message)
    except ValueError:
        return message.strip().splitlines()[-1]
    return None


def message_of(words: contract.AnyEvent | str | None) -> str | None:
    """The one-line message of an error event or of plain text."""
    if isinstance(words, str):
        return words
    return words.message if isinstance(words, contract.ErrorEvent) else None


def progress_of(event: contract.ProgressEvent) -> dict[str, Any]:
    """status.progress from a progress event: Progress takes the event's own field names."""
    fields = event.model_dump(include=set(Progress.model_fields))
    return Progress.model_validate(fields).model_dump(by_alias=True, exclude={"speed_vs_plan"})  # decide's


def parse_progress(log: str | None) -> dict[str, Any] | None:
    """status.progress from the last well-formed progress event of a log tail (garbled lines are skipped)."""
    for line in reversed((log or "").splitlines()):
        event = contract.parse_event(line)
        if isinstance(event, contract.ProgressEvent):
            try:
                return progress_of(event)
            except ValidationError:
                continue  # a garbled line must not stop the reconcile
    return None


def summary_of(pods: tuple[PodView, ...]) -> contract.SummaryEvent | None:
    """The newest succeeded rank-0 pod's summary."""
    for pod in sorted(pods, key=lambda p: p.created, reverse=True):
        if pod.index == 0 and pod.phase == "Succeeded":
            words = last_words(pod.termination_message)
            if isinstance(words, contract.SummaryEvent):
                return words
    return None


def merge_result(pods: tuple[PodView, ...]) -> contract.MergedEvent | None:
    """`kubetune merge`'s last words from the newest merge pod that succeeded."""
    for pod in sorted(pods, key=lambda p: p.created, reverse=True):
        if pod.phase == "Succeeded":
            words = last_words(pod.termination_message)
            if isinstance(words, contract.MergedEvent):
                return words
    return None


def failure_message(pods: tuple[PodView, ...], fallback: str) -> str:
    """The trainer's own words from the newest failed pod, else what the Job controller says."""
    for pod in sorted(pods, key=lambda p: p.created, reverse=True):
        if pod.phase == "Failed" and pod.exit_code not in (None, 0, ExitCode.PREEMPTED):
            text = message_of(last_words(pod.termination_message))
            return f"{pod.name} exited {pod.exit_code}: {text}" if text else f"{pod.name} exited {pod.exit_code}"
    return fallback


def result_location(event: contract.SummaryEvent | contract.MergedEvent | None) -> str | None:
    """Where the result went, for status: the push target once the trainer (or merge) reports it pushed."""
    pushed = getattr(event, "pushed_to", None)
    return str(pushed) if pushed else None
