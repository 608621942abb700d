"""The cores the test run was given, before tests/conftest.py pinned each xdist worker to its share."""

from __future__ import annotations

import os

ENV = "KTEST_RUN_CPUS"  # set by the pinning, inherited by what the worker starts


def run_cpus() -> list[int]:
    """All the run's cores (a pinned worker's own affinity is only its share)."""
    if listed := os.environ.get(ENV):
        return [int(c) for c in listed.split(",")]
    return sorted(os.sched_getaffinity(0))


def on_run_cpus() -> None:
    """A `preexec_fn` that gives a child every core of the run, for a test about how many cores a process sees."""
    os.sched_setaffinity(0, run_cpus())
