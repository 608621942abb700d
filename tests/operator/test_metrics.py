"""Prometheus metrics: jobs by phase, as scraped."""

from __future__ import annotations

from prometheus_client import generate_latest

from kubetune.operator.metrics import Metrics


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_jobs_by_phase_follow_each_job():
    m = Metrics()
    m.phase(("ml", "a"), "Running")
    m.phase(("ml", "b"), "Running")
    m.phase(("ml", "c"), "Failed")
    text = scrape(m)
    assert 'kubetune_finetunejobs{phase="Running"} 2.0' in text and 'kubetune_finetunejobs{phase="Failed"} 1.0' in text
    m.phase(("ml", "a"), "Succeeded")
    m.phase(("ml", "b"), None)  # deleted
    text = scrape(m)
    assert 'kubetune_finetunejobs{phase="Running"} 0.0' in text
    assert 'kubetune_finetunejobs{phase="Succeeded"} 1.0' in text


def test_errors_and_latency_are_exported_and_registries_are_separate():
    first, second = Metrics(), Metrics()  # a restarted operator in one process registers afresh
    first.errors.inc()
    first.reconciles.observe(0.2)
    assert "kubetune_reconcile_errors_total 1.0" in scrape(first)
    assert "kubetune_reconcile_seconds_count 1.0" in scrape(first)
    assert "kubetune_reconcile_errors_total 0.0" in scrape(second)


def test_every_phase_is_a_gauge_initializing_too():
    from typing import get_args

    from kubetune.api.finetunejob import Phase

    m = Metrics()
    m.phase(("ml", "remote"), "Initializing")
    text = scrape(m)
    assert 'kubetune_finetunejobs{phase="Initializing"} 1.0' in text
    assert all(f'kubetune_finetunejobs{{phase="{p}"}}' in text for p in get_args(Phase))
