"""Prometheus metrics: FinetuneJobs by phase, reconcile latency and errors."""

from __future__ import annotations

from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api.finetunejob import Phase

PHASES: tuple[str, ...] = get_args(Phase)  # every phase status can show, Initializing included


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        # Our own registry: a restarted operator in the same process (tests) registers afresh.
        self.registry = registry = registry or CollectorRegistry()
        self.jobs = Gauge("kubetune_finetunejobs", "FinetuneJobs by phase.", ["phase"], registry=registry)
        self.reconciles = Histogram(
            "kubetune_reconcile_seconds",
            "Time to observe, decide and apply one FinetuneJob.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.errors = Counter(
            "kubetune_reconcile_errors", "Reconciles that failed (retried at the next poll).", registry=registry
        )
        self._phases: dict[tuple[str, str], str] = {}

    def phase(self, key: tuple[str, str], phase: str | None) -> None:
        """Record (or with None forget) one job's phase and refresh the per-phase gauge."""
        if phase is None:
            self._phases.pop(key, None)
        else:
            self._phases[key] = phase
        for p in PHASES:
            self.jobs.labels(phase=p).set(sum(1 for v in self._phases.values() if v == p))

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
