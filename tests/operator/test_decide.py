"""decide: every transition of a FinetuneJob from an observation, no cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.api import backends, contract
from kubetune.api.finetunejob import CACHE_MESSAGE, DATA_CLAIM_MESSAGE, MODEL_CLAIM_MESSAGE
from kubetune.operator.decide import checked, decide, set_condition
from kubetune.operator.k8s import status_patch
from kubetune.operator.observed import Observed, PodView, Refusal
from kubetune.operator.render import Names
from kubetune.operator.reports import last_words, parse_progress
from kubetune.operator.settings import PodSettings
from kubetune.operator.validation import spec_problems

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
META = {"name": "quotes", "namespace": "ml", "uid": "uid-1"}
NAMES = Names.of("quotes")
INIT = NAMES.initializer
SPEC: dict[str, Any] = {
    "storage": {
        "model": {"claimName": "models"},
        "data": {"claimName": "data"},
        "output": {"claimName": "runs", "subPath": "quotes"},
    },
    "training": {"training": {"max_steps": 10}},
}
OWNED = {"ownerReferences": [{"uid": "uid-1"}]}


def job(
    name: str = NAMES.workers, suspend: bool = False, condition: str | None = None, reason: str = "", active: int = 0
) -> dict[str, Any]:
    status: dict[str, Any] = {"active": active}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": reason, "message": "m"}]
    return {"metadata": {"name": name, **OWNED}, "spec": {"suspend": suspend}, "status": status}


def pod(
    name: str,
    index: int = 0,
    phase: str = "Running",
    exit_code: int | None = None,
    message: str | None = None,
    created: str = "2026-11-22T11:00:00Z",
) -> PodView:
    return PodView(name, index, phase, created, exit_code, message)


def seen(**kw: Any) -> Observed:
    return Observed(now=kw.pop("now", NOW), has_config=True, has_service=True, **kw)


def run(spec: dict[str, Any] = SPEC, status: dict[str, Any] | None = None, observed: Observed | None = None):
    return decide(META, spec, status or {}, observed or seen(), PodSettings())


def progress_line(step: int, total: int = 10, loss: float = 1.5) -> str:
    return json.dumps(
        {
            "event": "progress",
            "step": step,
            "total_steps": total,
            "loss": loss,
            "epoch": 0.5,
            "tokens_per_second": 100.0,
            "eta_seconds": 12.0,
        }
    )


def test_invalid_spec_fails_with_every_problem_named():
    bad = {**SPEC, "nodes": 0, "training": {"training": {"lr": -1}}}
    plan = run(bad, observed=Observed(now=NOW))
    assert plan.status["phase"] == "Failed" and plan.done and not plan.create
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.nodes:" in failed["message"] and "spec.training.training.lr:" in failed["message"]
    assert [e.reason for e in plan.events] == ["InvalidSpec"]
    again = run(bad, status=plan.status, observed=Observed(now=NOW))
    assert again.events == [] and status_patch(plan.status, again.status) == {}


def test_spec_problems_across_fields():
    spec, problems = spec_problems({**SPEC, "backend": "cuda", "training": {"distributed": {"backend": "ccl"}}})
    assert spec is None and problems == [
        "spec.training.distributed.backend: 'ccl' does not run on backend 'cuda' (leave it 'auto')"
    ]
    assert spec_problems(SPEC)[1] == []


def initializing(spec: dict[str, Any] = SPEC) -> dict[str, Any]:
    """The status while the initializer (every run's first Job) runs."""
    return run(spec, observed=Observed(now=NOW)).status


def init_done(message: str | None = None, **kw: Any) -> Observed:
    """The initializer finished, its pod's last words `message` (a PlanEvent line, or nothing)."""
    done = pod("fetch-x", index=None, phase="Succeeded", exit_code=0, message=message)
    return Observed(
        now=NOW, has_config=True, initializer=job(INIT, condition="Complete"), initializer_pods=(done,), **kw
    )


def test_first_pass_creates_the_initializer_then_the_workers_and_is_pending():
    plan = run(observed=Observed(now=NOW))
    kinds = [(m["kind"], m["metadata"]["name"]) for m in plan.create]
    assert kinds == [("ConfigMap", NAMES.config), ("Job", INIT)]  # no worker before the preflight
    assert plan.status["phase"] == "Initializing" and [e.reason for e in plan.events] == ["Initializing"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}
    assert conditions == {"Created": ("True", "ChildrenCreated"), "Initialized": ("False", "Planning")}
    done = run(status=plan.status, observed=init_done())
    kinds = [(m["kind"], m["metadata"]["name"]) for m in done.create]
    assert kinds == [("Service", NAMES.service), ("Job", NAMES.workers)]
    assert done.status["phase"] == "Pending" and [e.reason for e in done.events] == ["Created"]


def test_nothing_is_created_twice_once_children_exist():
    first = run(observed=Observed(now=NOW))
    second = run(status=first.status, observed=seen(workers=job()))
    assert second.create == [] and second.events == []


def test_missing_children_are_recreated_without_a_new_transition():
    plan = run(status={"phase": "Running"}, observed=Observed(now=NOW, workers=job(active=1)))
    assert [m["kind"] for m in plan.create] == ["ConfigMap", "Service"]


def test_running_with_progress_from_the_rank0_log():
    log = "\n".join(["loading model", progress_line(3), "not json {", progress_line(4)])
    plan = run(
        status={"phase": "Pending"}, observed=seen(workers=job(active=1), worker_pods=(pod("w-0"),), rank0_log=log)
    )
    st = plan.status
    assert st["phase"] == "Running" and st["startTime"] == "2026-11-22T12:00:00Z"
    assert st["progress"] == {
        "step": 4,
        "totalSteps": 10,
        "loss": 1.5,
        "epoch": 0.5,
        "tokensPerSecond": 100.0,
        "etaSeconds": 12.0,
    }
    assert st["progressSummary"] == "4/10" and [e.reason for e in plan.events] == ["Running"]


def test_training_complete_starts_the_merge_then_succeeds():
    summary = json.dumps({"event": "summary", "steps": 10, "first_loss": 2.0, "final_loss": 0.5, "epochs": 1.0})
    pods = (pod("w-0", phase="Succeeded", exit_code=0, message=summary),)
    plan = run(status={"phase": "Running"}, observed=seen(workers=job(condition="Complete"), worker_pods=pods))
    assert [m["metadata"]["name"] for m in plan.create] == [NAMES.merge]
    assert plan.status["phase"] == "Merging" and plan.status["adapterPath"] == "pvc://runs/quotes/adapter"
    assert plan.status["progressSummary"] == "10/10" and plan.status["progress"]["loss"] == 0.5
    assert "loss 2.0000 -> 0.5000" in plan.status["message"]

    merging = run(status=plan.status, observed=seen(workers=job(condition="Complete"), merge=job(NAMES.merge)))
    assert merging.status["phase"] == "Merging" and merging.create == []
    lost = run(status=plan.status, observed=seen(workers=job(condition="Complete")))  # merge Job deleted by hand
    assert [m["metadata"]["name"] for m in lost.create] == [NAMES.merge] and lost.status["phase"] == "Merging"

    done = run(
        status=plan.status,
        observed=seen(workers=job(condition="Complete"), merge=job(NAMES.merge, condition="Complete")),
    )
    assert done.status["phase"] == "Succeeded" and done.status["mergedPath"] == "pvc://runs/quotes/merged"
    assert done.status["completionTime"] == "2026-11-22T12:00:00Z" and done.done is False  # no TTL: next pass ends
    assert run(status=done.status, observed=seen()).done


def test_without_merge_training_success_is_success():
    plan = run({**SPEC, "merge": {"enabled": False}}, {"phase": "Running"}, seen(workers=job(condition="Complete")))
    assert plan.status["phase"] == "Succeeded" and plan.create == [] and "mergedPath" not in plan.status


def test_worker_failure_carries_the_trainers_message():
    error = json.dumps({"event": "error", "exit_code": 3, "message": "/data/train.jsonl:7: missing field 'output'"})
    pods = (pod("w-0-a", phase="Failed", exit_code=3, message=error),)
    observed = seen(workers=job(condition="Failed", reason="BackoffLimitExceeded"), worker_pods=pods)
    plan = run(status={"phase": "Running"}, observed=observed)
    assert plan.status["phase"] == "Failed"
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BackoffLimitExceeded"
    assert failed["message"] == "w-0-a exited 3: /data/train.jsonl:7: missing field 'output'"
    assert plan.events[-1].type == "Warning"


def test_preempted_pods_are_not_the_failure_reason():
    pods = (pod("w-0-a", phase="Failed", exit_code=75, message='{"event":"error","exit_code":75,"message":"x"}'),)
    plan = run(
        status={"phase": "Running"},
        observed=seen(workers=job(condition="Failed", reason="PodFailurePolicy"), worker_pods=pods),
    )
    assert plan.status["message"] == "PodFailurePolicy: m"


def test_deadline_deletes_the_jobs_and_fails():
    started = {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}
    spec = {**SPEC, "runPolicy": {"activeDeadlineSeconds": 600}}
    plan = run(spec, started, seen(workers=job(active=1)))
    assert plan.status["phase"] == "Failed" and plan.delete == [("Job", NAMES.workers), ("Job", NAMES.merge)]
    assert next(c for c in plan.status["conditions"] if c["type"] == "Failed")["reason"] == "DeadlineExceeded"
    in_time = run(spec, {**started, "startTime": "2026-11-22T11:55:00Z"}, seen(workers=job(active=1)))
    assert in_time.status["phase"] == "Running" and not in_time.delete


def test_suspend_then_resume():
    spec = {**SPEC, "runPolicy": {"suspend": True}}
    status = {"phase": "Running", "startTime": "2026-11-22T11:00:00Z"}
    plan = run(spec, status, seen(workers=job(active=1), worker_pods=(pod("w-0"),)))
    assert plan.suspend_workers is True and plan.status["phase"] == "Suspended"
    assert "startTime" not in plan.status and status_patch(status, plan.status)["startTime"] is None
    assert "still stopping" in plan.status["message"]

    resumed = run(SPEC, plan.status, seen(workers=job(suspend=True)))
    assert resumed.suspend_workers is False and resumed.status["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in resumed.status["conditions"]}["Suspended"] == "False"
    assert [e.reason for e in resumed.events] == ["Resumed"]


def test_a_job_created_suspended_stays_suspended():
    """From an empty status: no initializer pod (no child at all) while suspended; resuming starts the initializer."""
    spec = {**SPEC, "runPolicy": {"suspend": True}}
    plan = run(spec, observed=Observed(now=NOW))
    assert plan.create == [] and plan.status["phase"] == "Suspended"
    assert [e.reason for e in plan.events] == ["Suspended"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in plan.status["conditions"]}
    assert conditions["Suspended"] == ("True", "Suspended") and "startTime" not in plan.status
    again = run(spec, plan.status, Observed(now=NOW))
    assert again.create == [] and again.events == [] and status_patch(plan.status, again.status) == {}
    resumed = run(SPEC, again.status, Observed(now=NOW))
    kinds = [(m["kind"], m["metadata"]["name"]) for m in resumed.create]
    assert kinds == [("ConfigMap", NAMES.config), ("Job", INIT)] and resumed.status["phase"] == "Initializing"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in resumed.status["conditions"]}
    assert conditions["Suspended"] == ("False", "Resumed") and conditions["Created"] == ("True", "ChildrenCreated")
    workers = run(SPEC, resumed.status, init_done())
    worker = next(m for m in workers.create if m["kind"] == "Job")
    assert worker["spec"]["suspend"] is False and workers.status["phase"] == "Pending"


def test_a_job_suspended_after_its_initializer_finished_creates_its_workers_suspended():
    spec = {**SPEC, "runPolicy": {"suspend": True}}
    plan = run(spec, initializing(spec), init_done())
    worker = next(m for m in plan.create if m["kind"] == "Job")
    assert worker["spec"]["suspend"] is True and plan.status["phase"] == "Suspended"


def test_restarts_count_new_pods_per_index():
    first = run(
        status={"phase": "Running"},
        observed=seen(workers=job(active=2), worker_pods=(pod("w-0-a"), pod("w-1-a", index=1))),
    )
    assert first.status["restarts"] == 0 and first.status["workerPods"] == {"0": "w-0-a", "1": "w-1-a"}
    replaced = (
        pod("w-0-a", phase="Failed", exit_code=75),
        pod("w-0-b", created="2026-11-22T11:30:00Z"),
        pod("w-1-a", index=1),
    )
    second = run(status=first.status, observed=seen(workers=job(active=2), worker_pods=replaced))
    assert second.status["restarts"] == 1 and second.status["workerPods"]["0"] == "w-0-b"
    assert "WorkerRestarted" in [e.reason for e in second.events]
    third = run(status=second.status, observed=seen(workers=job(active=2), worker_pods=replaced))
    assert third.status["restarts"] == 1


def test_ttl_removes_children_after_finishing():
    spec = {**SPEC, "runPolicy": {"ttlSecondsAfterFinished": 60}}
    finished = {"phase": "Succeeded", "completionTime": "2026-11-22T11:59:30Z"}
    observed = seen(workers=job(condition="Complete"), merge=job(NAMES.merge, condition="Complete"))
    waiting = run(spec, finished, observed)
    assert waiting.delete == [] and not waiting.done
    later = decide(
        META,
        spec,
        finished,
        seen(now=NOW + timedelta(seconds=31), workers=observed.workers, merge=observed.merge),
        PodSettings(),
    )
    assert sorted(later.delete) == sorted(
        [("ConfigMap", NAMES.config), ("Service", NAMES.service), ("Job", NAMES.workers), ("Job", NAMES.merge)]
    )
    assert later.status["phase"] == "Succeeded"
    gone = decide(META, spec, finished, Observed(now=NOW + timedelta(seconds=31)), PodSettings())
    assert gone.done and gone.delete == []


def test_someone_elses_job_is_never_adopted():
    foreign = {**job(), "metadata": {"name": NAMES.workers, "ownerReferences": [{"uid": "other"}]}}
    plan = run(status={"phase": "Pending"}, observed=seen(workers=foreign))
    assert plan.status["phase"] == "Failed" and "not owned" in plan.status["message"] and plan.create == []


def test_conditions_keep_their_transition_time_while_unchanged():
    first = set_condition([], "Running", "True", "A", "", NOW)
    later = set_condition(first, "Running", "True", "B", "", NOW + timedelta(minutes=5))
    assert later[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and later[0]["reason"] == "B"
    flipped = set_condition(later, "Running", "False", "C", "", NOW + timedelta(minutes=5))
    assert flipped[0]["lastTransitionTime"] == "2026-11-22T12:05:00Z"


def test_parsers():
    assert parse_progress("noise\n" + progress_line(2) + '\n{"event": "summary"}\n')["step"] == 2
    assert parse_progress("no json here") is None and parse_progress(None) is None
    summary = last_words('{"event": "summary", "steps": 3}')
    assert isinstance(summary, contract.SummaryEvent) and summary.steps == 3
    assert last_words("Traceback...\nValueError: boom\n") == "ValueError: boom"
    assert last_words('{"not": "ours"}') is None and last_words("") is None


def test_pod_view_reads_index_and_termination():
    raw = {
        "metadata": {
            "name": "w-0-x",
            "labels": {"batch.kubernetes.io/job-completion-index": "0"},
            "creationTimestamp": "2026-11-22T11:00:00Z",
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": {"exitCode": 75, "message": "m"}}}],
        },
    }
    assert PodView.of(raw) == PodView("w-0-x", 0, "Failed", "2026-11-22T11:00:00Z", 75, "m")


def test_a_name_the_api_server_would_refuse_for_a_child_fails_up_front():
    plan = decide({**META, "name": "1.quotes"}, SPEC, {}, Observed(now=NOW), PodSettings())
    assert plan.status["phase"] == "Failed" and plan.create == [] and plan.done
    assert "metadata.name must be at most 63 characters" in plan.status["message"]


def test_deadline_during_merging_never_creates_and_deletes_the_merge_job_at_once():
    spec = {**SPEC, "runPolicy": {"activeDeadlineSeconds": 60}}
    status = {"phase": "Merging", "startTime": "2026-11-22T11:00:00Z"}
    plan = run(spec, status, seen(workers=job(condition="Complete")))  # the merge Job is missing
    assert plan.status["phase"] == "Failed" and plan.create == []
    assert ("Job", NAMES.merge) in plan.delete


def test_the_previous_runs_job_is_waited_for_not_taken_as_foreign():
    old_run = {"ownerReferences": [{"kind": "FinetuneJob", "name": "quotes", "uid": "uid-0", "controller": True}]}
    leftover = {**job(), "metadata": {"name": NAMES.workers, **old_run}}
    plan = run(observed=seen(workers=leftover))
    assert plan.status["phase"] == "Pending" and plan.create == [] and not plan.done
    assert "garbage-collected" in plan.status["message"]
    stranger = run(observed=Observed(now=NOW, not_ours=(("foreign", "ConfigMap", NAMES.config),)))
    assert stranger.status["phase"] == "Failed" and stranger.status["message"].startswith("ConfigMap quotes-config")


def refused(status: dict[str, Any], code: int, message: str) -> Any:
    """decide after the handlers' create was refused (they observe the refusal and decide again)."""
    return decide(META, SPEC, status, seen(refused=Refusal("Job", NAMES.workers, code, message)), PodSettings())


def test_refusals_fail_or_report_with_the_servers_words():
    invalid = refused({}, 422, 'Job "x" is invalid: metadata.labels: bad')
    assert invalid.status["phase"] == "Failed"
    assert (
        invalid.status["message"]
        == f'creating Job {NAMES.workers} was refused (422): Job "x" is invalid: metadata.labels: bad'
    )
    forbidden = refused({"phase": "Pending"}, 403, "jobs is forbidden")
    assert forbidden.status["phase"] == "Pending" and not forbidden.done
    assert [e.reason for e in forbidden.events] == ["Forbidden"]
    again = refused(forbidden.status, 403, "jobs is forbidden")
    assert again.events == [] and status_patch(forbidden.status, again.status) == {}


def test_a_queued_job_is_left_to_kueue():
    spec = {**SPEC, "scheduling": {"queueName": "team-a"}}
    created = run(spec, initializing(spec), init_done())
    assert next(m for m in created.create if m["kind"] == "Job")["spec"]["suspend"] is True
    waiting = run(spec, created.status, seen(workers=job(suspend=True)))
    assert waiting.suspend_workers is None and "waiting for admission" in waiting.status["message"]
    admitted = run(spec, waiting.status, seen(workers=job(active=1), worker_pods=(pod("w-0"),)))
    assert admitted.suspend_workers is None and admitted.status["phase"] == "Running"
    both = run({**spec, "runPolicy": {"suspend": True}}, observed=Observed(now=NOW))
    assert both.status["phase"] == "Failed" and "Kueue owns the suspension" in both.status["message"]


def test_status_goes_through_the_model():
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError):
        checked({"phase": "Running", "progres": {}})  # a misspelled key is an error, not silently pruned
    assert checked({"phase": "Running"}) == {"phase": "Running"}  # nothing defaulted in


def test_a_garbled_progress_line_is_skipped_not_fatal():
    bad = json.dumps({"event": "progress", "step": "three", "total_steps": 10})
    assert parse_progress(progress_line(2) + "\n" + bad + "\n")["step"] == 2


# --- remote sources: the initializer Job first, then the workers ---------------------------------------------
REMOTE_SPEC: dict[str, Any] = {
    "storage": {"output": {"claimName": "runs", "subPath": "quotes"}},
    "sources": {"cache": {"claimName": "cache"}, "s3CredentialsSecret": "s3"},
    "training": {
        "model": {"path": "hf://org/llama@v1"},
        "data": {"path": ["s3://data/quotes.jsonl"]},
        "output": {"push_to": "s3://results/quotes"},
    },
}


def test_remote_sources_without_a_cache_or_claims_fail_naming_each_field():
    spec = {**REMOTE_SPEC, "sources": None, "training": {**REMOTE_SPEC["training"], "data": {"path": ["x.jsonl"]}}}
    plan = run(spec, observed=Observed(now=NOW))
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert plan.status["phase"] == "Failed" and failed["reason"] == "InvalidSpec" and not plan.create
    assert failed["message"] == f"{DATA_CLAIM_MESSAGE}; {CACHE_MESSAGE}"
    no_model = {**SPEC, "storage": {"data": {"claimName": "d"}, "output": {"claimName": "o"}}}
    assert spec_problems(no_model)[1] == [MODEL_CLAIM_MESSAGE]
    assert spec_problems(REMOTE_SPEC)[1] == []  # remote model and data: only the output claim


def test_the_initializer_runs_first_and_the_workers_only_after_it_completed():
    first = run(REMOTE_SPEC, observed=Observed(now=NOW))
    created = [(m["kind"], m["metadata"]["name"]) for m in first.create]
    assert created == [("ConfigMap", NAMES.config), ("Job", INIT)]  # no worker Job yet
    assert first.status["phase"] == "Initializing" and "hf://org/llama@v1" in first.status["message"]
    conditions = {c["type"]: (c["status"], c["reason"]) for c in first.status["conditions"]}
    assert conditions == {"Created": ("True", "ChildrenCreated"), "Initialized": ("False", "Fetching")}
    assert [e.reason for e in first.events] == ["Initializing"]

    fetching = run(REMOTE_SPEC, first.status, seen(initializer=job(INIT, active=1)))
    assert fetching.create == [] and fetching.status["phase"] == "Initializing" and fetching.events == []

    done = run(REMOTE_SPEC, fetching.status, seen(initializer=job(INIT, condition="Complete")))
    assert [m["metadata"]["name"] for m in done.create] == [NAMES.workers]
    assert done.status["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in done.status["conditions"]}["Initialized"] == "True"
    # Once initialized, the worker Job's fate is the job's: the finished initializer is not looked at again.
    later = run(REMOTE_SPEC, done.status, seen(workers=job(active=1), worker_pods=(pod("w-0"),)))
    assert later.create == [] and later.status["phase"] == "Running"


def test_a_failed_fetch_fails_the_job_with_the_trainers_line_and_no_worker_is_created():
    line = "model.path: hf://org/llama@v1: no such repository at http://hub (or private: set HF_TOKEN)"
    message = json.dumps({"event": "error", "exit_code": 10, "message": line})
    failed_pod = pod("fetch-x", index=None, phase="Failed", exit_code=10, message=message)
    observed = seen(
        initializer=job(INIT, condition="Failed", reason="BackoffLimitExceeded"), initializer_pods=(failed_pod,)
    )
    plan = run(REMOTE_SPEC, {"phase": "Initializing"}, observed)
    assert plan.create == [] and plan.status["phase"] == "Failed" and plan.status["message"] == line
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert (failed["reason"], failed["message"]) == ("SourceNotFound", line)
    assert [e.reason for e in plan.events] == ["SourceNotFound"]


def test_an_initializer_job_of_someone_else_is_not_adopted():
    foreign = {**job(INIT), "metadata": {"name": INIT, "ownerReferences": [{"uid": "other", "kind": "Job"}]}}
    plan = run(REMOTE_SPEC, observed=seen(initializer=foreign))
    assert plan.status["phase"] == "Failed" and "not owned" in plan.status["message"] and not plan.create


def test_ttl_and_deadline_remove_the_initializer_too():
    done = {"phase": "Succeeded", "completionTime": "2026-11-22T11:00:00Z"}
    spec = {**REMOTE_SPEC, "runPolicy": {"ttlSecondsAfterFinished": 1}}
    plan = run(spec, done, seen(initializer=job(INIT, condition="Complete"), workers=job(condition="Complete")))
    assert ("Job", INIT) in plan.delete and ("Job", NAMES.workers) in plan.delete
    late = {"phase": "Initializing", "startTime": "2026-11-22T10:00:00Z"}
    spec = {**REMOTE_SPEC, "runPolicy": {"activeDeadlineSeconds": 60}}
    plan = run(spec, late, seen(initializer=job(INIT, active=1)))
    assert plan.status["phase"] == "Failed" and ("Job", INIT) in plan.delete and not plan.create


def test_result_location_and_best_eval_come_from_the_summaries():
    summary = {
        "event": "summary",
        "steps": 10,
        "first_loss": 2.0,
        "final_loss": 0.5,
        "eval_metric": "exact_match",
        "best_step": 6,
        "best_value": 0.75,
        "pushed_to": "s3://results/quotes",
    }
    pods = (pod("w-0", phase="Succeeded", exit_code=0, message=json.dumps(summary)),)
    trained = run(REMOTE_SPEC, {"phase": "Running"}, seen(workers=job(condition="Complete"), worker_pods=pods))
    assert trained.status["resultLocation"] == "s3://results/quotes"
    assert (trained.status["evalMetric"], trained.status["bestStep"], trained.status["bestValue"]) == (
        "exact_match",
        6,
        0.75,
    )
    merged = json.dumps({"event": "merged", "merged_path": "/output/merged", "pushed_to": "hf://org/quotes-merged"})
    merge_pods = (pod("m-0", index=None, phase="Succeeded", exit_code=0, message=merged),)
    observed = seen(
        workers=job(condition="Complete"), merge=job(NAMES.merge, condition="Complete"), merge_pods=merge_pods
    )
    done = run(REMOTE_SPEC, trained.status, observed)
    assert done.status["phase"] == "Succeeded" and done.status["resultLocation"] == "hf://org/quotes-merged"
    assert "pushed to hf://org/quotes-merged" in done.status["message"]
    foreign = json.dumps({"merged_path": "/output/merged", "pushed_to": "hf://elsewhere"})  # not a MergedEvent
    merge_pods = (pod("m-0", index=None, phase="Succeeded", exit_code=0, message=foreign),)
    observed = seen(
        workers=job(condition="Complete"), merge=job(NAMES.merge, condition="Complete"), merge_pods=merge_pods
    )
    ignored = run(REMOTE_SPEC, trained.status, observed)
    assert ignored.status["phase"] == "Succeeded" and ignored.status["resultLocation"] == "s3://results/quotes"
    plain = json.dumps({"event": "summary", "steps": 10})  # no eval chose the adapter, nothing was pushed
    pods = (pod("w-0", phase="Succeeded", exit_code=0, message=plain),)
    spec = {**SPEC, "merge": {"enabled": False}}
    local = run(spec, {"phase": "Running"}, seen(workers=job(condition="Complete"), worker_pods=pods))
    assert local.status["phase"] == "Succeeded"
    assert not {"bestStep", "evalMetric", "resultLocation"} & set(local.status)


def waiting_pod(reason: str, message: str) -> PodView:
    return PodView.of(
        {
            "metadata": {"name": "w-0-a", "labels": {"batch.kubernetes.io/job-completion-index": "0"}},
            "status": {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message}}}
                ],
            },
        }
    )


def test_pending_pods_are_not_running_and_their_reason_is_in_status():
    # Job.status.active counts Pending pods too: a pod in ImagePullBackOff must not make the job Running.
    stuck = waiting_pod("ImagePullBackOff", 'Back-off pulling image "kubetune/trainer:nope"')
    plan = run(status={"phase": "Pending"}, observed=seen(workers=job(active=1), worker_pods=(stuck,)))
    assert plan.status["phase"] == "Pending" and "startTime" not in plan.status
    running = next(c for c in plan.status["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", "ImagePullBackOff")
    assert (
        plan.status["message"]
        == 'waiting for worker pod w-0-a: ImagePullBackOff: Back-off pulling image "kubetune/trainer:nope"'
    )
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "ImagePullBackOff")]
    again = run(status=plan.status, observed=seen(workers=job(active=1), worker_pods=(stuck,)))
    assert again.events == [] and status_patch(plan.status, again.status) == {}


def test_an_unschedulable_pod_and_a_missing_secret_are_named():
    unschedulable = PodView.of(
        {
            "metadata": {"name": "w-0-a"},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                    }
                ],
            },
        }
    )
    plan = run(status={"phase": "Pending"}, observed=seen(workers=job(active=1), worker_pods=(unschedulable,)))
    assert plan.status["message"].endswith("Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    secret = waiting_pod("CreateContainerConfigError", 'secret "s3" not found')
    plan = run(status={"phase": "Pending"}, observed=seen(workers=job(active=1), worker_pods=(secret,)))
    assert plan.status["phase"] == "Pending" and 'secret "s3" not found' in plan.status["message"]


def test_a_worker_pod_the_job_controller_cannot_create_is_named_once():
    quota = "Error creating: pods is forbidden: exceeded quota: team-a"
    observed = seen(workers=job(), create_failures=((NAMES.workers, quota),))
    plan = run(status={"phase": "Pending"}, observed=observed)
    assert plan.status["phase"] == "Pending" and quota in plan.status["message"]
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "FailedCreate")]
    assert run(status=plan.status, observed=observed).events == []  # reported once, not every poll
    other = seen(workers=job(), create_failures=((NAMES.merge, quota),))  # another Job's refusal is not the workers'
    assert "exceeded quota" not in (run(status={"phase": "Pending"}, observed=other).status.get("message") or "")


def test_run_policy_edits_reach_the_worker_job():
    rendered = {**job(active=1), "spec": {"suspend": False, "backoffLimit": 3}}
    spec = {**SPEC, "runPolicy": {"backoffLimit": 3}}
    assert run(spec, {"phase": "Running"}, seen(workers=rendered)).patch_workers == {}
    edited = {**SPEC, "runPolicy": {"backoffLimit": 7, "activeDeadlineSeconds": 3600}}
    plan = run(edited, {"phase": "Running"}, seen(workers=rendered))
    assert plan.patch_workers == {"backoffLimit": 7, "activeDeadlineSeconds": 3600}


def test_a_trainers_message_with_a_credential_is_masked_in_status_and_events():
    # A plain-text last line (FallbackToLogsOnError) quoting a presigned URL and a user:pass@ URL (issue 22 #2).
    secret_url = "https://bob:hunter2pass@files.example/train.jsonl?X-Amz-Signature=deadbeefcafe1234&X-Amz-Date=1"
    line = f"data.path: {secret_url}: 404 Not Found; Authorization: Bearer sk-live-0123456789"
    pods = (pod("w-0-a", phase="Failed", exit_code=10, message=line),)
    observed = seen(workers=job(condition="Failed", reason="BackoffLimitExceeded"), worker_pods=pods)
    plan = run(status={"phase": "Running"}, observed=observed)
    written = json.dumps(plan.status) + "".join(e.message for e in plan.events)
    for secret in ("hunter2pass", "deadbeefcafe1234", "sk-live-0123456789"):
        assert secret not in written
    assert plan.status["phase"] == "Failed" and plan.events and plan.events[-1].type == "Warning"
    # What is left still says where and why.
    assert "https://***@files.example/train.jsonl?X-Amz-Signature=***" in plan.status["message"]
    assert "404 Not Found" in plan.events[-1].message


def test_a_refusal_quoting_a_credential_is_masked_and_reported_once():
    said = "admission webhook denied: env value https://u:pa55word1@x.example/m?token=abcdef123456 not allowed"
    observed = seen(refused=Refusal("Job", NAMES.workers, 403, said))
    first = run(status={"phase": "Pending"}, observed=observed)
    assert "pa55word1" not in json.dumps(first.status) and "abcdef123456" not in json.dumps(first.status)
    assert [e.reason for e in first.events] == ["Forbidden"] and "pa55word1" not in first.events[0].message
    again = run(status=first.status, observed=observed)  # the masked message is the same: no second Event
    assert again.events == []


# --- the preflight plan: status.plan, workers sized by it, a run that cannot fit refused ------------------
GiB = 2**30


def plan_line(peak: float, **kw: Any) -> str:
    """The initializer's last words, written with the contract's model as the trainer writes them."""
    fields = dict(batch_size=8, tokens_per_epoch=12_000, steps_per_epoch=10, steps=20, seconds=400.0)
    return contract.PlanEvent(peak_bytes=round(peak * GiB), **{**fields, **kw}).line()


def worker_resources(plan) -> dict[str, Any]:
    worker = next(m for m in plan.create if m["kind"] == "Job" and m["metadata"]["name"] == NAMES.workers)
    return worker["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_an_unsized_run_plans_first_and_its_workers_get_the_plans_memory_with_headroom():
    first = run(observed=Observed(now=NOW))
    init = next(m for m in first.create if m["metadata"]["name"] == INIT)
    container = init["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["plan", "--preflight", "--json"]  # no limit to check against
    done = run(status=first.status, observed=init_done(plan_line(2.0)))
    # The plan's 2 GiB as the request; the limit is the cpu backend's default 6Gi, above 2 GiB x 1.25 = 2560 Mi,
    # so a run that peaks a third above its plan is not OOMKilled; the cpu backend's cpu request stays.
    assert worker_resources(done) == {
        "requests": {"cpu": "1", "memory": "2048Mi"},
        "limits": {"memory": "6144Mi"},
    }
    assert done.status["plan"] == {
        "peakBytesPerWorker": 2 * GiB,
        "peak": "2.0 GiB",
        "batchSize": 8,
        "tokens": 24_000,
        "steps": 20,
        "estimatedSeconds": 400.0,
        "tokensPerSecond": 60.0,
        "estimate": "2.0 GiB, ~7m",
        "memory": "6144Mi",
    }
    initialized = next(c for c in done.status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("True", "Planned")
    # A worker Job deleted by hand (or a restarted operator) is recreated from status.plan: the same size.
    again = run(status={**done.status, "phase": "Running"}, observed=seen())
    assert worker_resources(again) == worker_resources(done)
    # status.plan.memory is the limit the pod gets, as the user read it (say an earlier operator wrote another).
    earlier = {**done.status, "phase": "Running", "plan": {**done.status["plan"], "memory": "7000Mi"}}
    assert worker_resources(run(status=earlier, observed=seen()))["limits"] == {"memory": "7000Mi"}
    # Above the backend's default: the limit is the plan x HEADROOM (10 GiB x 1.25), the request the plan.
    big = run(status=first.status, observed=init_done(plan_line(10.0)))
    assert worker_resources(big) == {"requests": {"cpu": "1", "memory": "10240Mi"}, "limits": {"memory": "12800Mi"}}


def test_a_plan_of_several_processes_per_pod_sizes_the_pod_for_all_of_them():
    spec = {**SPEC, "procsPerNode": 2}
    first = run(spec, observed=Observed(now=NOW))
    env = next(m for m in first.create if m["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "KUBETUNE_NPROC_PER_NODE", "value": "2"} in env  # the plan divides the pod among them
    done = run(spec, first.status, init_done(plan_line(3.5)))
    assert worker_resources(done)["limits"]["memory"] == "8960Mi"  # 2 x 3.5 GiB x 1.25
    assert worker_resources(done)["requests"]["memory"] == "7168Mi"  # 2 x 3.5 GiB
    assert done.status["plan"]["peakBytesPerWorker"] == 7 * GiB


def test_a_run_above_its_memory_limit_fails_before_any_worker_with_the_numbers():
    spec = {**SPEC, "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}}}
    first = run(spec, observed=Observed(now=NOW))
    init = next(m for m in first.create if m["metadata"]["name"] == INIT)
    assert init["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--memory", str(8 * GiB)]
    line = plan_line(14.2, fits=False, memory_limit_bytes=8 * GiB, max_batch_size=4)
    failed = run(spec, first.status, init_done(line))
    assert [m["kind"] for m in failed.create] == [] and failed.status["phase"] == "Failed"
    message = "needs 14.2 GiB per worker, spec.resources.limits.memory is 8Gi; training.batch_size 4 would fit"
    condition = next(c for c in failed.status["conditions"] if c["type"] == "Failed")
    assert (condition["reason"], condition["message"]) == ("InsufficientMemory", message)
    assert failed.status["message"] == message and failed.status["plan"]["maxBatchSize"] == 4
    assert [e.reason for e in failed.events] == ["InsufficientMemory"]
    assert run(spec, failed.status, init_done(line)).create == []  # and stays so


def test_ignore_plan_starts_a_run_above_its_memory_limit():
    """training.ignore_plan, which the trainer's own refusal tells the user to set, is honoured by the operator."""
    training = {"training": {"max_steps": 10, "ignore_plan": True}}
    spec = {**SPEC, "training": training, "resources": {"limits": {"memory": "8Gi"}}}
    line = plan_line(14.2, fits=False, memory_limit_bytes=8 * GiB, max_batch_size=4)
    done = run(spec, initializing(spec), init_done(line))
    assert done.status["phase"] == "Pending" and worker_resources(done)["limits"] == {"memory": "8Gi"}
    assert done.status["plan"]["maxBatchSize"] == 4 and [e.reason for e in done.events] == ["Created"]


def test_a_run_within_its_limit_keeps_the_resources_it_asked_for():
    spec = {**SPEC, "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}}
    done = run(spec, initializing(spec), init_done(plan_line(3.0, fits=True, memory_limit_bytes=8 * GiB)))
    assert worker_resources(done) == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    assert done.status["phase"] == "Pending" and "memory" not in done.status["plan"]


def test_without_a_plan_the_workers_get_the_backend_defaults():
    # An initializer that exits 0 without a PlanEvent (a model the plan cannot build): the run goes on. An image
    # older than the preflight does not get here: its `kubetune plan` refuses --preflight with exit 2.
    done = run(status=initializing(), observed=init_done(""))
    assert worker_resources(done) == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
    initialized = next(c for c in done.status["conditions"] if c["type"] == "Initialized")
    assert (initialized["status"], initialized["reason"]) == ("True", "NoPlan") and "plan" not in done.status


def test_on_a_gpu_backend_the_cpu_plan_neither_sizes_nor_refuses():
    spec = {**SPEC, "backend": "cuda", "resources": {"limits": {"memory": "8Gi", "nvidia.com/gpu": "1"}}}
    done = run(spec, initializing(spec), init_done(plan_line(14.2, fits=False, memory_limit_bytes=8 * GiB)))
    assert done.status["phase"] == "Pending" and "plan" not in done.status
    assert worker_resources(done)["limits"] == {"memory": "8Gi", "nvidia.com/gpu": "1"}


def merge_resources(spec: dict[str, Any], plan_status: dict[str, Any]) -> dict[str, Any]:
    """The merge Job's container resources, created when training completes (and again, deleted by hand)."""
    summary = json.dumps({"event": "summary", "steps": 10, "first_loss": 2.0, "final_loss": 0.5, "epochs": 1.0})
    pods = (pod("w-0", phase="Succeeded", exit_code=0, message=summary),)
    status = {**plan_status, "phase": "Running"}
    trained = run(spec, status, seen(workers=job(condition="Complete"), worker_pods=pods))
    merge = next(m for m in trained.create if m["metadata"]["name"] == NAMES.merge)
    lost = run(spec, trained.status, seen(workers=job(condition="Complete")))  # deleted by hand: the same size
    again = next(m for m in lost.create if m["metadata"]["name"] == NAMES.merge)
    resources = merge["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert again["spec"]["template"]["spec"]["containers"][0]["resources"] == resources
    return resources


def test_an_unsized_runs_merge_job_gets_the_plans_merge_peak_with_headroom():
    # A QLoRA worker planned at 2 GiB, its merge (the base in fp32, reloaded once written) at 12 GiB: the merge
    # pod asks for 12 GiB and may grow to 15 GiB, where the backend's default (6Gi) would OOMKill it.
    done = run(status=initializing(), observed=init_done(plan_line(2.0, merge_peak_bytes=12 * GiB)))
    assert done.status["plan"]["mergePeakBytes"] == 12 * GiB and done.status["plan"]["mergeMemory"] == "15360Mi"
    assert worker_resources(done) == {"requests": {"cpu": "1", "memory": "2048Mi"}, "limits": {"memory": "6144Mi"}}
    assert merge_resources(SPEC, done.status) == {
        "requests": {"cpu": "1", "memory": "12288Mi"},
        "limits": {"memory": "15360Mi"},
    }
    # A small merge keeps the backend's default limit as its floor, like the workers; the request is its peak.
    small = run(status=initializing(), observed=init_done(plan_line(1.0, merge_peak_bytes=3 * GiB)))
    assert merge_resources(SPEC, small.status) == {
        "requests": {"cpu": "1", "memory": "3072Mi"},
        "limits": {"memory": "6144Mi"},
    }


def test_a_merge_without_a_planned_peak_gets_the_backend_defaults():
    defaults = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
    no_plan = run(status=initializing(), observed=init_done(""))
    assert merge_resources(SPEC, no_plan.status) == defaults
    # An initializer image older than the merge plan: its PlanEvent has no merge_peak_bytes; the workers are sized.
    old = json.loads(plan_line(2.0))
    del old["merge_peak_bytes"]
    older = run(status=initializing(), observed=init_done(json.dumps(old)))
    assert "mergePeakBytes" not in older.status["plan"] and older.status["plan"]["memory"] == "6144Mi"
    assert merge_resources(SPEC, older.status) == defaults


def test_a_sized_runs_merge_job_keeps_the_resources_it_asked_for():
    given = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    spec = {**SPEC, "resources": given}
    done = run(spec, initializing(spec), init_done(plan_line(3.0, merge_peak_bytes=12 * GiB, fits=True)))
    assert "mergeMemory" not in done.status["plan"] and done.status["plan"]["mergePeakBytes"] == 12 * GiB
    assert merge_resources(spec, done.status) == given


def test_on_a_gpu_backend_the_merge_job_is_not_sized_by_the_cpu_plan():
    spec = {**SPEC, "backend": "cuda"}
    done = run(spec, initializing(spec), init_done(plan_line(2.0, merge_peak_bytes=12 * GiB)))
    assert "plan" not in done.status  # a CPU plan says nothing of a GPU's memory: the backend's defaults
    assert merge_resources(spec, done.status) == backends.get("cuda").resources()


def test_progress_compares_the_measured_rate_with_the_plans():
    status = {"phase": "Running", "plan": run(status=initializing(), observed=init_done(plan_line(2.0))).status["plan"]}
    plan = run(
        status=status, observed=seen(workers=job(active=1), worker_pods=(pod("w-0"),), rank0_log=progress_line(4))
    )
    assert plan.status["progress"]["speedVsPlan"] == round(100.0 / 60.0, 2)  # 100 tokens/s measured, 60 planned


def test_an_initializer_pod_that_cannot_start_says_why():
    waiting = PodView(
        "quotes-fetch-x", None, "Pending", "2026-11-22T11:00:00Z", waiting=("ImagePullBackOff", "no image")
    )
    plan = run(status=initializing(), observed=seen(initializer=job(INIT, active=1), initializer_pods=(waiting,)))
    assert plan.status["phase"] == "Initializing"
    assert plan.status["message"] == "waiting for initializer pod quotes-fetch-x: ImagePullBackOff: no image"
    assert [e.reason for e in plan.events] == ["ImagePullBackOff"]
