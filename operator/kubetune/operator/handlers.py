"""kopf handlers: thin. Settings in one startup hook; one daemon per FinetuneJob that observes,
asks `status.decide` what to do, and does it.

Why a daemon and not a chain of on.create/on.update handlers: the state that matters (Jobs, pods,
logs) lives in other objects, so the job is level-triggered: every `poll_seconds` it looks at
everything and converges. A restarted operator does the same from the same state, which is why it
never creates anything twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.finetunejob import GROUP, PLURAL, VERSION
from kubetune.operator import k8s
from kubetune.operator.metrics import Metrics
from kubetune.operator.settings import SettingsError, from_env
from kubetune.operator.status import decide, status_patch


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    try:
        memo.config = from_env(os.environ)
    except SettingsError as exc:
        # A wrong chart value will not fix itself: stop with its one line instead of retrying forever.
        raise kopf.PermanentError(str(exc)) from None
    # Handler progress in annotations: the CRD's status schema has no room for kopf's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    k8s.configure()
    memo.cluster = k8s.Cluster()
    memo.metrics = Metrics()
    memo.metrics.serve(memo.config.metrics_port)
    memo.reconciles = 0
    logger.info(
        "kubetune operator: poll %.1fs, images %s, metrics port %s",
        memo.config.poll_seconds,
        memo.config.render.images,
        memo.config.metrics_port or "off",
    )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account, elsewhere $KUBECONFIG (read now; the client library reads it at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="reconciles")
def reconciles(memo: kopf.Memo, **_: Any) -> int:
    return int(getattr(memo, "reconciles", 0))


async def reconcile(namespace: str, name: str, memo: kopf.Memo, logger: Any) -> bool:
    """One pass; True when the job needs no more watching."""
    cluster: k8s.Cluster = memo.cluster
    ftj = await asyncio.to_thread(cluster.get_finetunejob, namespace, name)
    if ftj is None or ftj["metadata"].get("deletionTimestamp"):
        return True
    meta, old = ftj["metadata"], ftj.get("status") or {}
    seen = await asyncio.to_thread(cluster.observe, meta, datetime.now(UTC))
    plan = decide(meta, ftj.get("spec") or {}, old, seen, memo.config.render)
    for manifest in plan.create:
        if await asyncio.to_thread(cluster.create, manifest):
            logger.info("created %s %s", manifest["kind"], manifest["metadata"]["name"])
        else:
            logger.info("adopted existing %s %s", manifest["kind"], manifest["metadata"]["name"])
    if plan.suspend_workers is not None:
        await asyncio.to_thread(cluster.suspend_job, namespace, seen.workers["metadata"]["name"], plan.suspend_workers)
    for kind, child in plan.delete:
        if await asyncio.to_thread(cluster.delete, namespace, kind, child):
            logger.info("deleted %s %s", kind, child)
    patch = status_patch(old, plan.status)
    if patch:
        await asyncio.to_thread(cluster.patch_status, namespace, name, patch)
    for event in plan.events:
        kopf.event(ftj, type=event.type, reason=event.reason, message=event.message[:1000])
    memo.metrics.phase((namespace, name), plan.status.get("phase"))
    memo.reconciles += 1
    return plan.done


@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=5)
async def run(meta: kopf.Meta, stopped: kopf.DaemonStopped, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    namespace, name = meta["namespace"], meta["name"]
    while not stopped:
        started = time.perf_counter()
        try:
            if await reconcile(namespace, name, memo, logger):
                logger.info("finished: nothing more to watch")
                return
        except ApiException as exc:
            # The API server was unavailable or refused a write: count it and try again at the next poll.
            memo.metrics.errors.inc()
            logger.warning("reconcile failed (retrying in %.0fs): %s %s", memo.config.poll_seconds, exc.status,
                           exc.reason)  # fmt: skip
        finally:
            memo.metrics.reconciles.observe(time.perf_counter() - started)
        await stopped.wait(memo.config.poll_seconds)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Children go with the FinetuneJob through ownerReferences; only the metrics need telling."""
    memo.metrics.phase((namespace, name), None)
