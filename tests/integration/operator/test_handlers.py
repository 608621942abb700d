"""The operator (kopf, kubetune-operator's command line) against kmock's emulated API server.

kmock runs no controllers, so these tests play the Job controller and kubelet by hand: they create
pods and set Job conditions. tests/e2e_local runs the same operator with real trainer processes.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from kube import (
    NAMES,
    Cluster,
    condition,
    events_seen,
    eventually,
    finetunejob,
    job_pod_metadata,
    job_status,
    operator,
    phase_is,
    pod,
    terminated,
)
from preflight import initialized, worker_job

from kubetune.api import TrainConfig, contract
from kubetune.operator.render import Names
from kubetune.operator.settings import PodSettings


async def start_running(api: Cluster, **spec: Any) -> dict[str, Any]:
    """A FinetuneJob whose worker pod runs (the tests play the Job controller)."""
    await api.create(finetunejob(**spec))
    await worker_job(api)
    await pod(api, 0, "Running")
    await job_status(api, NAMES.workers, active=1)
    return await phase_is(api, "Running")


def progress(step: int, total: int = 5, loss: float = 1.25) -> str:
    record = {
        "event": "progress",
        "step": step,
        "total_steps": total,
        "loss": loss,
        "epoch": step / total,
        "tokens_per_second": 80.0,
        "eta_seconds": float(total - step),
    }
    return json.dumps(record)


async def test_create_makes_the_children_with_the_trainers_config(cluster: Cluster):
    async with operator():
        created = await cluster.create(finetunejob())
        await phase_is(cluster, "Initializing")
        job = await worker_job(cluster)
        config = await cluster.get("ConfigMap", NAMES.config)
        service = await cluster.get("Service", NAMES.service)
        events = await events_seen(cluster, "Created")  # not the first Event: kopf posts them from a queue
    uid = created["metadata"]["uid"]
    for obj in (job, config, service):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid
    cfg = TrainConfig.model_validate(yaml.safe_load(config["data"]["config.yaml"]))
    assert (cfg.model.path, cfg.data.path, cfg.output_dir) == ("/model", ["/data/quotes.jsonl"], "/output")
    assert cfg.training.max_steps == 5
    assert job["spec"]["completionMode"] == "Indexed" and service["spec"]["clusterIP"] == "None"
    assert any(e.get("reason") == "Created" and e["involvedObject"]["uid"] == uid for e in events)


async def test_progress_from_the_rank0_log_lands_in_status(cluster: Cluster):
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        name = await pod(cluster, 0, "Running")
        cluster.logs[name] = "loading the model\n" + progress(2) + "\n"
        await job_status(cluster, NAMES.workers, active=1)
        running = await phase_is(cluster, "Running")
        assert running["status"]["startTime"]
        cluster.logs[name] += progress(3, loss=0.75) + "\n"

        async def at_step_3() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", "quotes")
            return obj if (obj["status"].get("progress") or {}).get("step") == 3 else None

        obj = await eventually(at_step_3, what="progress step 3")
    assert obj["status"]["progress"]["loss"] == 0.75 and obj["status"]["progressSummary"] == "3/5"


async def test_training_then_merge_then_succeeded(cluster: Cluster):
    summary = json.dumps({"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5, "epochs": 1.0})
    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        await pod(cluster, 0, "Succeeded", exit_code=0, message=summary)
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        merging = await phase_is(cluster, "Merging")
        merge = await eventually(lambda: cluster.get("Job", NAMES.merge), what="merge Job")
        assert merge["spec"]["template"]["spec"]["containers"][0]["args"][:1] == ["merge"]
        assert merging["status"]["adapterPath"] == "pvc://runs/quotes/adapter"
        assert merging["status"]["progress"]["loss"] == 0.5
        await job_status(cluster, NAMES.merge, succeeded=1, conditions=condition("Complete"))
        done = await phase_is(cluster, "Succeeded")
        await events_seen(cluster, "Created", "TrainingSucceeded", "Succeeded")
    assert done["status"]["mergedPath"] == "pvc://runs/quotes/merged" and done["status"]["completionTime"]


async def test_worker_failures_are_retried_then_fail_with_the_trainers_message(cluster: Cluster):
    error = json.dumps({"event": "error", "exit_code": 3, "message": "/data/quotes.jsonl:7: missing field 'output'"})
    async with operator():
        await cluster.create(finetunejob(runPolicy={"backoffLimit": 1}))
        job = await worker_job(cluster)
        assert job["spec"]["backoffLimit"] == 1
        await pod(cluster, 0, "Failed", "a", 3, error, "2026-11-22T10:00:00Z")
        await pod(cluster, 0, "Running", "b", created="2026-11-22T10:01:00Z")  # the Job controller's retry
        await job_status(cluster, NAMES.workers, active=1, failed=1)

        async def restarted() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", "quotes")
            return obj if (obj.get("status") or {}).get("restarts") == 1 else None

        running = await eventually(restarted, what="one restart counted")
        assert running["status"]["phase"] == "Running"
        await cluster.patch("Pod", f"{NAMES.workers}-0-b", terminated("Failed", 3, error), sub="status")
        await job_status(
            cluster,
            NAMES.workers,
            active=0,
            failed=2,
            conditions=condition("Failed", "BackoffLimitExceeded", "Job has reached the backoff limit"),
        )
        failed = await phase_is(cluster, "Failed")
    cond = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "BackoffLimitExceeded"
    assert cond["message"] == f"{NAMES.workers}-0-b exited 3: /data/quotes.jsonl:7: missing field 'output'"


async def test_deadline_fails_the_job_and_stops_the_workers(cluster: Cluster):
    async with operator():
        # The deadline covers the preflight too: here it passes while the initializer runs.
        await cluster.create(finetunejob(runPolicy={"activeDeadlineSeconds": 1}))
        await eventually(lambda: cluster.get("Job", NAMES.initializer), what="initializer Job")
        failed = await phase_is(cluster, "Failed")
        assert next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
        assert await eventually(lambda: _gone(cluster, "Job", NAMES.initializer), what="initializer deleted")
        assert await cluster.get("Job", NAMES.workers) is None


async def _gone(api: Cluster, kind: str, name: str) -> bool:
    return await api.get(kind, name) is None


async def test_suspend_and_resume(cluster: Cluster):
    async with operator():
        await start_running(cluster)

        await cluster.patch("FinetuneJob", "quotes", {"spec": {"runPolicy": {"suspend": True}}})

        async def job_suspended(value: bool) -> bool:
            job = await cluster.get("Job", NAMES.workers)
            return bool(job["spec"].get("suspend")) is value

        await eventually(lambda: job_suspended(True), what="Job suspended")
        # The Job controller's part: the pod is deleted (SIGTERM), nothing is active.
        await cluster.delete("Pod", f"{NAMES.workers}-0-a")
        await job_status(cluster, NAMES.workers, active=0, conditions=condition("Suspended", "JobSuspended"))
        suspended = await phase_is(cluster, "Suspended")
        assert {c["type"]: c["status"] for c in suspended["status"]["conditions"]}["Suspended"] == "True"

        await cluster.patch("FinetuneJob", "quotes", {"spec": {"runPolicy": {"suspend": False}}})
        await eventually(lambda: job_suspended(False), what="Job resumed")
        await phase_is(cluster, "Pending")
    assert cluster.requests("post", "Job") == 2  # the initializer, the workers: resumed, not recreated


async def test_an_operator_restart_creates_nothing_twice(cluster: Cluster):
    async with operator():
        await start_running(cluster)
    posts = {k: cluster.requests("post", k) for k in ("Job", "ConfigMap", "Service")}
    assert posts == {"Job": 2, "ConfigMap": 1, "Service": 1}  # the initializer and the workers
    async with operator():  # a new operator process adopts what exists
        summary = json.dumps({"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5})
        await cluster.patch("Pod", f"{NAMES.workers}-0-a", terminated("Succeeded", 0, summary), sub="status")
        await job_status(cluster, NAMES.workers, active=0, succeeded=1, conditions=condition("Complete"))
        await phase_is(cluster, "Merging")
    assert {k: cluster.requests("post", k) for k in ("Job", "ConfigMap", "Service")} == {
        "Job": 3,  # the merge Job, once
        "ConfigMap": 1,
        "Service": 1,
    }


async def test_an_invalid_spec_fails_with_the_fields_named(cluster: Cluster):
    # The real API server refuses most of this through the CRD's schema; the operator still checks.
    bad = finetunejob(nodes=0, backend="cuda")
    bad["spec"]["training"] = {"training": {"lr": -1}, "distributed": {"backend": "ccl"}}
    async with operator():
        await cluster.create(bad)
        failed = await phase_is(cluster, "Failed")
        await events_seen(cluster, "InvalidSpec", type_="Warning")
    message = failed["status"]["message"]
    assert "spec.nodes:" in message and "spec.training.training.lr:" in message
    assert await cluster.get("Job", NAMES.workers) is None


async def test_ttl_removes_the_children_of_a_finished_job(cluster: Cluster):
    summary = json.dumps({"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5})
    async with operator():
        await cluster.create(finetunejob(merge={"enabled": False}, runPolicy={"ttlSecondsAfterFinished": 1}))
        await worker_job(cluster)
        worker = await pod(cluster, 0, "Succeeded", exit_code=0, message=summary)
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        await phase_is(cluster, "Succeeded")

        async def children_gone() -> bool:
            # The pods too: a Job deleted without a propagation policy orphans them (batch/v1's default).
            kinds = [("Job", NAMES.workers), ("ConfigMap", NAMES.config), ("Service", NAMES.service), ("Pod", worker)]
            return all([await cluster.get(kind, name) is None for kind, name in kinds])

        await eventually(children_gone, what="children deleted after the TTL")
        await events_seen(cluster, "TTLExpired")
    obj = await cluster.get("FinetuneJob", "quotes")
    assert obj["status"]["phase"] == "Succeeded"  # the FinetuneJob and its status stay


# --- remote sources: the initializer Job, then the workers --------------------------------------------------
INIT = Names.of("quotes").initializer


def remote(**spec: Any) -> dict[str, Any]:
    """A FinetuneJob whose model and data are remote: only the output claim, plus the cache."""
    ftj = finetunejob(
        sources={"cache": {"claimName": "cache"}, "s3CredentialsSecret": "s3"},
        hfTokenSecret={"name": "hf"},
        **spec,
    )
    ftj["spec"]["storage"] = {"output": {"claimName": "runs", "subPath": "quotes"}}
    ftj["spec"]["training"] = {
        "model": {"path": "hf://org/smollm2@v1"},
        "data": {"path": ["s3://data/quotes.jsonl"]},
        "training": {"max_steps": 5},
        "output": {"push_to": "s3://results/quotes"},
    }
    return ftj


async def fetch_pod(api: Cluster, phase: str, exit_code: int, message: str) -> None:
    """The initializer's pod, as the Job controller and kubelet leave it."""
    metadata = await job_pod_metadata(api, INIT, f"{INIT}-x")
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**metadata, "creationTimestamp": "2026-11-22T10:00:00Z"},
            "status": terminated(phase, exit_code, message)["status"],
        }
    )


async def test_remote_sources_are_fetched_before_any_worker_and_the_result_location_lands_in_status(
    cluster: Cluster,
):
    summary = {"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5, "best_step": 4}
    async with operator():
        await cluster.create(remote())
        initializing = await phase_is(cluster, "Initializing")
        init = await eventually(lambda: cluster.get("Job", INIT), what="initializer Job")
        assert await cluster.get("Job", NAMES.workers) is None  # nobody trains on a half-filled cache
        assert "hf://org/smollm2@v1" in initializing["status"]["message"]
    async with operator():  # a restarted operator adopts the initializer instead of starting a second fetch
        await job_status(cluster, INIT, succeeded=1, conditions=condition("Complete"))
        workers = await eventually(lambda: cluster.get("Job", NAMES.workers), what="worker Job")
        await pod(cluster, 0, "Succeeded", exit_code=0, message=json.dumps({**summary, "pushed_to": "s3://results/q"}))
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        merging = await phase_is(cluster, "Merging")
        assert merging["status"]["resultLocation"] == "s3://results/q" and merging["status"]["bestStep"] == 4
        merge = await eventually(lambda: cluster.get("Job", NAMES.merge), what="merge Job")
        merged = {"event": "merged", "merged_path": "/output/merged", "pushed_to": "s3://results/quotes"}
        await cluster.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": await job_pod_metadata(cluster, NAMES.merge, f"{NAMES.merge}-x"),
                "status": terminated("Succeeded", 0, json.dumps(merged))["status"],
            }
        )
        await job_status(cluster, NAMES.merge, succeeded=1, conditions=condition("Complete"))
        done = await phase_is(cluster, "Succeeded")
        await events_seen(cluster, "Initializing", "Created", "Succeeded")
    assert done["status"]["resultLocation"] == "s3://results/quotes"
    assert cluster.requests("post", "Job") == 3  # initializer, workers, merge: each once
    uid = (await cluster.get("FinetuneJob", "quotes"))["metadata"]["uid"]
    for job in (init, workers, merge):
        pod_spec = job["spec"]["template"]["spec"]
        c = pod_spec["containers"][0]
        assert c["envFrom"] == [{"secretRef": {"name": "s3"}}], job["metadata"]["name"]  # all push to s3 or fetch
        assert {"name": "KUBETUNE_CACHE_DIR", "value": "/cache"} in c["env"]
        # One lock per run: the initializer writes it under the uid, workers and merge read exactly that.
        assert {"name": contract.ENV_SOURCES_LOCK, "value": uid} in c["env"]
        cache = next(m for m in c["volumeMounts"] if m["mountPath"] == "/cache")
        assert bool(cache.get("readOnly")) is (job is not init), job["metadata"]["name"]
        # The hf:// model is the initializer's to fetch: only it holds the HF token (the push goes to s3://).
        assert any(e["name"] == contract.ENV_HF_TOKEN_FILE for e in c["env"]) is (job is init)
        tmp = next(v for v in pod_spec["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"]["sizeLimit"] == PodSettings().tmp_size
    assert init["spec"]["template"]["spec"]["containers"][0]["args"] == ["plan", "--preflight", "--json"]
    cfg = TrainConfig.model_validate(
        yaml.safe_load((await cluster.get("ConfigMap", NAMES.config))["data"]["config.yaml"])
    )
    assert (cfg.model.path, cfg.data.path) == ("hf://org/smollm2@v1", ["s3://data/quotes.jsonl"])


async def test_a_fetch_that_fails_ends_the_job_with_the_trainers_message(cluster: Cluster):
    line = "data.path: s3://data/quotes.jsonl: no such bucket 'data' at http://s3.local"
    async with operator():
        await cluster.create(remote())
        await eventually(lambda: cluster.get("Job", INIT), what="initializer Job")
        await fetch_pod(cluster, "Failed", 10, json.dumps({"event": "error", "exit_code": 10, "message": line}))
        await job_status(cluster, INIT, failed=2, conditions=condition("Failed", "BackoffLimitExceeded", "limit"))
        failed = await phase_is(cluster, "Failed")
        await events_seen(cluster, "SourceNotFound", type_="Warning")
    assert failed["status"]["message"] == line
    cond = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert (cond["reason"], cond["message"]) == ("SourceNotFound", line)
    assert await cluster.get("Job", NAMES.workers) is None


async def test_a_fetch_error_quoting_a_credential_reaches_no_status_or_event(cluster: Cluster):
    # The trainer masks its own line; a plain-text log tail (FallbackToLogsOnError) is copied by the operator.
    line = (
        "Traceback: GET https://bob:hunter2pass@files.example/q.jsonl?X-Amz-Signature=deadbeefcafe1234 "
        "failed; Authorization: Bearer sk-live-0123456789"
    )
    async with operator():
        await cluster.create(remote())
        await eventually(lambda: cluster.get("Job", INIT), what="initializer Job")
        await fetch_pod(cluster, "Failed", 1, line)
        await job_status(cluster, INIT, failed=2, conditions=condition("Failed", "BackoffLimitExceeded", "limit"))
        failed = await phase_is(cluster, "Failed")
        events = await events_seen(cluster, "InitializerFailed", type_="Warning")
    written = json.dumps(failed["status"]) + json.dumps(events)
    assert "files.example/q.jsonl" in failed["status"]["message"]  # still says what failed
    for secret in ("hunter2pass", "deadbeefcafe1234", "sk-live-0123456789"):
        assert secret not in written


async def test_an_error_that_is_not_the_api_servers_is_a_condition_and_the_daemon_goes_on(cluster: Cluster):
    # A garbled answer (a proxy's HTML page with 200) makes the client raise a ValueError, not an ApiException:
    # the daemon must neither die nor hide it; the FinetuneJob shows it, and the next good pass clears it.
    broken = {"on": True}
    jobs = cluster.kmock["get", cluster.kmock.resource("batch/v1/jobs")]
    jobs << (lambda request: b"<html>bad gateway</html>" if broken["on"] else None)

    async def error_condition() -> dict[str, Any] | None:
        obj = await cluster.get("FinetuneJob", "quotes")
        conditions = ((obj or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "ReconcileError"), None)

    async with operator():
        await cluster.create(finetunejob())
        found = await eventually(error_condition, what="ReconcileError condition")
        assert found["status"] == "True" and found["reason"] == "JSONDecodeError"
        broken["on"] = False
        await worker_job(cluster, what="worker Job once the answers are good")
        await phase_is(cluster, "Pending")
        assert await error_condition() is None


async def test_a_log_read_the_kubelet_cannot_answer_does_not_stall_the_job(cluster: Cluster):
    # A NotReady node: the API server answers 503 for the pod's log. Status, deadline and completion go on.
    from kube import Refused

    async with operator():
        await cluster.create(finetunejob())
        await worker_job(cluster)
        name = await pod(cluster, 0, "Running")
        cluster.logs[name] = Refused(503, "ServiceUnavailable", "the node is NotReady")
        await job_status(cluster, NAMES.workers, active=1)
        await phase_is(cluster, "Running")
        await cluster.patch("Pod", name, terminated("Succeeded", 0, ""), sub="status")
        await job_status(cluster, NAMES.workers, active=0, succeeded=1, conditions=condition("Complete"))
        await phase_is(cluster, "Merging")  # merge.enabled by default


async def test_a_pod_that_cannot_pull_its_image_leaves_the_job_pending_with_the_reason(cluster: Cluster):
    async with operator():
        await cluster.create(finetunejob())  # its image is not on the node: the kubelet cannot pull it
        await worker_job(cluster)
        name = await pod(cluster, 0, "Pending")
        waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}
        status = {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": waiting}]}
        await cluster.patch("Pod", name, {"status": status}, sub="status")
        await job_status(cluster, NAMES.workers, active=1)  # the Job controller counts the Pending pod as active

        async def reported() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", "quotes")
            return obj if "ImagePullBackOff" in ((obj or {}).get("status") or {}).get("message", "") else None

        obj = await eventually(reported, what="the waiting reason in status.message")
        await events_seen(cluster, "ImagePullBackOff", type_="Warning")
    # startTime is the preflight's (the deadline covers it); no worker runs, so Running is not True.
    running = next((c for c in obj["status"]["conditions"] if c["type"] == "Running"), {})
    assert obj["status"]["phase"] == "Pending" and running.get("status") != "True"


async def test_an_image_or_secret_the_policy_forbids_is_refused_with_the_reason(cluster: Cluster, monkeypatch):
    # issue 29: a user allowed FinetuneJobs but not pods must not run any image with any Secret of the namespace.
    policy = {"KUBETUNE_ALLOWED_SECRETS": "ml/s3-readonly"}
    for key, value in policy.items():
        monkeypatch.setenv(key, value)
    async with operator(env=policy):
        await cluster.create(finetunejob(image="attacker/x:latest", hfTokenSecret={"name": "db-password"}))
        failed = await phase_is(cluster, "Failed")
        await events_seen(cluster, "NotAllowed", type_="Warning")
    condition_ = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition_["reason"] == "NotAllowed"
    assert "spec.image: 'attacker/x:latest'" in condition_["message"] and "'db-password'" in condition_["message"]
    assert await cluster.get("Job", NAMES.workers) is None and await cluster.get("ConfigMap", NAMES.config) is None


async def test_a_deleted_finetunejob_leaves_the_phase_gauge(cluster: Cluster, monkeypatch):
    # No kopf finalizer, so on.delete never runs: the daemon forgets the job when it finds it gone.
    import aiohttp
    from operatorpod import free_port

    port = free_port()
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", str(port))

    async def running_gauge(expected: str) -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as r:
            return f'kubetune_finetunejobs{{phase="Running"}} {expected}' in await r.text()

    async with operator(env={"KUBETUNE_METRICS_PORT": str(port)}):
        await start_running(cluster)
        await eventually(lambda: running_gauge("1.0"), what="one Running job in the gauge")
        await cluster.delete("FinetuneJob", "quotes")
        await eventually(lambda: running_gauge("0.0"), what="the deleted job gone from the gauge")


async def test_a_run_policy_edit_is_applied_to_the_worker_job(cluster: Cluster):
    async with operator():
        await start_running(cluster, runPolicy={"backoffLimit": 2})
        await cluster.patch("FinetuneJob", "quotes", {"spec": {"runPolicy": {"backoffLimit": 5}}})

        async def applied() -> dict[str, Any] | None:
            job = await cluster.get("Job", NAMES.workers)
            return job if job and job["spec"].get("backoffLimit") == 5 else None

        await eventually(applied, what="backoffLimit 5 on the worker Job")


async def test_a_ttl_set_after_the_job_finished_still_removes_its_children(cluster: Cluster):
    summary = json.dumps({"event": "summary", "steps": 5, "first_loss": 2.0, "final_loss": 0.5})
    async with operator():
        await cluster.create(finetunejob(merge={"enabled": False}))
        await worker_job(cluster)
        await pod(cluster, 0, "Succeeded", exit_code=0, message=summary)
        await job_status(cluster, NAMES.workers, succeeded=1, conditions=condition("Complete"))
        await phase_is(cluster, "Succeeded")
        await cluster.patch("FinetuneJob", "quotes", {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 1}}})

        async def children_gone() -> bool:
            kinds = [("Job", NAMES.workers), ("ConfigMap", NAMES.config), ("Service", NAMES.service)]
            return all([await cluster.get(kind, name) is None for kind, name in kinds])

        await eventually(children_gone, what="the children deleted by the later TTL")
    assert (await cluster.get("FinetuneJob", "quotes"))["status"]["phase"] == "Succeeded"


def test_operator_logs_mask_credentials_in_messages_and_tracebacks():
    # kopf posts its per-object log lines as Events: the filter must act before any handler (issue 22 #2).
    import logging

    from kubetune.operator.handlers import Redacting

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(self.format(record))

    logger = logging.getLogger("kubetune-test-redacting")
    logger.propagate, handler = False, Keep()
    logger.addHandler(handler)
    logger.addFilter(Redacting())
    try:
        try:
            raise ValueError("GET https://u:hunter2pass@x.example/f?X-Amz-Signature=deadbeefcafe1234 failed")
        except ValueError:
            logger.exception("reconcile failed: %s", "token=sk-live-0123456789")
    finally:
        logger.removeHandler(handler)
    (text,) = seen
    assert "reconcile failed" in text and "ValueError" in text and "x.example" in text
    for secret in ("hunter2pass", "deadbeefcafe1234", "sk-live-0123456789"):
        assert secret not in text


# --- the preflight plan ------------------------------------------------------------------------------------
GiB = 2**30


def plan_line(peak_gib: float, **kw: Any) -> str:
    fields = dict(batch_size=8, tokens_per_epoch=6000, steps_per_epoch=5, steps=5, seconds=120.0)
    return contract.PlanEvent(peak_bytes=round(peak_gib * GiB), **{**fields, **kw}).line()


async def test_a_run_its_plan_says_cannot_fit_fails_with_the_numbers_and_no_worker_job(cluster: Cluster):
    line = plan_line(14.2, fits=False, memory_limit_bytes=8 * GiB, max_batch_size=4)
    async with operator():
        await cluster.create(finetunejob(resources={"limits": {"memory": "8Gi"}}))
        init = await initialized(cluster, message=line)
        failed = await phase_is(cluster, "Failed")
        events = await events_seen(cluster, "InsufficientMemory", type_="Warning")
    assert init["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--memory", str(8 * 2**30)]
    message = "needs 14.2 GiB per worker, spec.resources.limits.memory is 8Gi; training.batch_size 4 would fit"
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert (condition["reason"], condition["message"]) == ("InsufficientMemory", message)
    assert failed["status"]["plan"]["peak"] == "14.2 GiB" and failed["status"]["plan"]["maxBatchSize"] == 4
    assert any(e["message"] == message for e in events)
    assert await cluster.get("Job", NAMES.workers) is None and cluster.requests("post", "Job") == 1


async def test_an_unsized_run_gets_its_workers_memory_from_the_plan_and_status_shows_it(cluster: Cluster):
    async with operator():
        await cluster.create(finetunejob())
        workers = await worker_job(cluster, message=plan_line(2.0))
        name = await pod(cluster, 0, "Running")
        cluster.logs[name] = progress(2) + "\n"  # 80 tokens/s measured; the plan said 6000 / 120 s = 50
        await job_status(cluster, NAMES.workers, active=1)

        async def compared() -> dict[str, Any] | None:
            obj = await cluster.get("FinetuneJob", "quotes")
            return obj if (obj["status"].get("progress") or {}).get("speedVsPlan") else None

        running = await eventually(compared, what="progress compared with the plan")
    resources = workers["spec"]["template"]["spec"]["containers"][0]["resources"]
    # The plan's 2 GiB requested; the limit is the cpu backend's 6Gi, above 2 GiB x HEADROOM (2560Mi).
    assert resources == {"requests": {"cpu": "1", "memory": "2048Mi"}, "limits": {"memory": "6144Mi"}}
    assert running["status"]["plan"]["estimate"] == "2.0 GiB, ~2m" and running["status"]["plan"]["tokens"] == 6000
    assert running["status"]["progress"]["speedVsPlan"] == 1.6
