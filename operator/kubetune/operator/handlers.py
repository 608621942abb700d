"""kopf handlers: thin. Settings in one startup hook; one daemon per FinetuneJob that observes,
asks `decide` what to do, and does it.

Why a daemon and not a chain of on.create/on.update handlers: the state that matters (Jobs, pods,
logs) lives in other objects, so the job is level-triggered: every `poll_seconds` it looks at
everything and converges. A restarted operator does the same from the same state, which is why it
never creates anything twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.finetunejob import GROUP, PLURAL, VERSION
from kubetune.api.redact import redact
from kubetune.operator import k8s
from kubetune.operator.decide import Plan, decide, reconcile_error
from kubetune.operator.metrics import Metrics
from kubetune.operator.observed import Observed, Refusal
from kubetune.operator.settings import SettingsError, from_env


class Redacting(logging.Filter):
    """Masks credentials (kubetune.api.redact) in a log record, its traceback included, before any handler sees
    it: kopf posts its per-object log lines as Events, and an API error or a pod's words may quote a URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # also one a handler formatted (and cached) before this filter ran
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """On kopf's per-object logger (its Event poster too) and on every root handler (the rest)."""
    for target in (logging.getLogger("kopf.objects"), *logging.getLogger().handlers):
        if not any(isinstance(f, Redacting) for f in target.filters):  # once, however often kopf starts us
            target.addFilter(Redacting())


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    redact_logs()
    try:
        memo.config = from_env(os.environ)
    except SettingsError as exc:
        # A wrong chart value will not fix itself: stop with its one line instead of retrying forever.
        raise kopf.PermanentError(str(exc)) from None
    # Handler progress in annotations: the CRD's status schema has no room for kopf's own fields.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Watching given namespaces: no cluster-wide scans of namespaces and CRDs (a namespaced Role forbids them).
    settings.scanning.disabled = bool(memo.config.watch_namespaces)
    k8s.configure()
    memo.cluster = k8s.Cluster()
    memo.metrics = Metrics()
    memo.metrics.serve(memo.config.metrics_port)
    memo.reconciles = 0
    logger.info(
        "kubetune operator: poll %.1fs, images %s, metrics port %s",
        memo.config.poll_seconds,
        memo.config.pods.images,
        memo.config.metrics_port or "off",
    )


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod its service account, elsewhere $KUBECONFIG (read now; the client library reads it at import)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.probe(id="reconciles")
def reconciles(memo: kopf.Memo, **_: Any) -> int:
    return int(getattr(memo, "reconciles", 0))


# Refusals decide reports on the FinetuneJob (400/422 fail it; 403 is shown and retried, an admin may fix it);
# any other status (409 is Cluster.create's, 5xx an outage) raises and is retried at the next poll.
REFUSED = (400, 403, 422)


async def reconcile(namespace: str, name: str, memo: kopf.Memo, logger: Any, uid: str | None = None) -> bool:
    """One pass (observe, decide, act, report); True when the job needs no more watching: it is gone, being
    deleted, or replaced by a new FinetuneJob of the same name (that one has a daemon of its own)."""
    cluster: k8s.Cluster = memo.cluster
    ftj = await asyncio.to_thread(cluster.get_finetunejob, namespace, name)
    if ftj is None or ftj["metadata"].get("deletionTimestamp") or (uid and ftj["metadata"].get("uid") != uid):
        if ftj is None or ftj["metadata"].get("deletionTimestamp"):
            # on.delete never runs for an object without kopf's finalizer (see _without_finalizer): forget it here.
            memo.metrics.phase((namespace, name), None)
        return True
    meta, old = ftj["metadata"], ftj.get("status") or {}
    now = datetime.now(UTC)
    seen = await asyncio.to_thread(cluster.observe, meta, now, memo.config.pods.network_policy)
    spec = ftj.get("spec") or {}
    plan = decide(meta, spec, old, seen, memo.config.pods)
    met = await _create(cluster, meta, plan, logger)
    if met is None:
        await _act_on_jobs(cluster, namespace, seen, plan, logger)
    else:  # a refusal or someone else's object: decide again with what the create met
        plan = decide(meta, spec, old, dataclasses.replace(seen, **met), memo.config.pods)
    return await _report(cluster, ftj, plan, memo, logger) and plan.done


async def _create(cluster: k8s.Cluster, meta: dict[str, Any], plan: Plan, logger: Any) -> dict[str, Any] | None:
    """Create the plan's children; stop at a refusal or someone else's object, returned as an observation."""
    for manifest in plan.create:
        kind, child = manifest["kind"], manifest["metadata"]["name"]
        try:
            outcome = await asyncio.to_thread(cluster.create, manifest, meta)
        except ApiException as exc:
            if exc.status not in REFUSED:
                raise
            said = redact(k8s.server_message(exc))  # the server may quote the manifest (a location, a URL)
            logger.warning("creating %s %s refused: %s %s", kind, child, exc.status, said)
            return {"refused": Refusal(kind, child, exc.status, said)}
        if outcome in ("previous", "foreign"):
            return {"not_ours": ((outcome, kind, child),)}
        logger.info("%s %s %s", outcome, kind, child)
    return None


async def _act_on_jobs(cluster: k8s.Cluster, namespace: str, seen: Observed, plan: Plan, logger: Any) -> None:
    patch = {**plan.patch_workers, **({"suspend": plan.suspend_workers} if plan.suspend_workers is not None else {})}
    if patch and seen.workers is not None:
        await asyncio.to_thread(cluster.patch_job, namespace, seen.workers["metadata"]["name"], patch)
        logger.info("patched Job %s: %s", seen.workers["metadata"]["name"], patch)
    for kind, child in plan.delete:
        if await asyncio.to_thread(cluster.delete, namespace, kind, child):
            logger.info("deleted %s %s", kind, child)


async def _report(cluster: k8s.Cluster, ftj: dict[str, Any], plan: Plan, memo: kopf.Memo, logger: Any) -> bool:
    """Write the pass's status, then its events; False when the FinetuneJob changed since it was read (409)."""
    meta = ftj["metadata"]
    try:
        await asyncio.to_thread(cluster.patch_status, ftj, plan.status)
    except ApiException as exc:
        if exc.status != 409:
            raise
        # Someone wrote the object since this pass read it, or it is a new FinetuneJob of the same name (deleted
        # and re-applied): this pass's decisions are stale. Nothing is reported; the next pass decides again
        # (and, for a replaced object, ends: the new one has a daemon of its own).
        logger.info("the FinetuneJob changed while this pass ran: its status is decided again at the next pass")
        return False
    for event in plan.events:
        kopf.event(ftj, type=event.type, reason=event.reason, message=event.message[:1000])
    memo.metrics.phase((meta["namespace"], meta["name"]), plan.status.get("phase"))
    memo.reconciles += 1
    return True


async def _report_error(cluster: k8s.Cluster, namespace: str, name: str, exc: Exception, logger: Any) -> None:
    """Best effort: write the ReconcileError condition; the API being down is what may have caused it."""
    try:
        ftj = await asyncio.to_thread(cluster.get_finetunejob, namespace, name)
        if ftj is None:
            return
        new = reconcile_error(ftj.get("status") or {}, datetime.now(UTC), type(exc).__name__, str(exc))
        await asyncio.to_thread(cluster.patch_status, ftj, new)
    except Exception:  # the original error matters more than this one
        logger.warning("could not report the reconcile error on the FinetuneJob", exc_info=True)


@kopf.daemon(GROUP, VERSION, PLURAL, id="reconcile", cancellation_timeout=5)
async def run(meta: kopf.Meta, stopped: kopf.DaemonStopped, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    namespace, name = meta["namespace"], meta["name"]
    while not stopped:
        started = time.perf_counter()
        try:
            if await reconcile(namespace, name, memo, logger, meta.get("uid")):
                logger.info("finished: nothing more to watch")
                return
        except ApiException as exc:
            # The API server was unavailable or refused a write: count it and try again at the next poll.
            memo.metrics.errors.inc()
            reason = redact(str(exc.reason))
            logger.warning("reconcile failed (retrying in %.0fs): %s %s", memo.config.poll_seconds, exc.status, reason)
        except Exception as exc:  # the client's own checks, a garbled answer, a bug of ours
            # Never let it end the daemon (kopf would restart it, silently, with a growing backoff): the
            # FinetuneJob shows the error as a condition, and the next pass tries again.
            memo.metrics.errors.inc()
            logger.exception("reconcile failed (retrying in %.0fs)", memo.config.poll_seconds)
            await _report_error(memo.cluster, namespace, name, exc, logger)
        finally:
            memo.metrics.reconciles.observe(time.perf_counter() - started)
        await stopped.wait(memo.config.poll_seconds)


def _without_finalizer(registry: Any, fn: Any) -> None:
    """kopf gives every daemon a finalizer, so that it can stop the daemon before the object goes. Ours needs
    none (children go through ownerReferences; the loop ends itself once the FinetuneJob is gone), and the
    finalizer would make deleting a FinetuneJob or its namespace hang whenever no operator runs: after
    `helm uninstall` (the CRD stays) or during an outage. kopf has no public switch for it, so the registered
    handler is replaced by a copy without; kopf also removes the finalizer older versions left on objects.
    tests/operator proves both (a deletion with the operator stopped, and no finalizer on a running job)."""
    spawning = registry._spawning
    if not any(getattr(h, "fn", None) is fn for h in spawning._handlers):
        raise RuntimeError("kopf's registry changed: the reconcile daemon was not found")  # fail loud, not silently
    spawning._handlers = [
        dataclasses.replace(h, requires_finalizer=False) if getattr(h, "fn", None) is fn else h
        for h in spawning._handlers
    ]


_without_finalizer(kopf.get_default_registry(), run)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Children go with the FinetuneJob through ownerReferences; only the metrics need telling."""
    memo.metrics.phase((namespace, name), None)
